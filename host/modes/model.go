package modes

import (
	"fmt"
	"math"
	"slices"

	"github.com/dwcp/dwcp/host/pipeline"
)

// Prior is what one codec level is expected to do before it has been
// observed in a session: encode speed per core in stream bytes per second
// and compression ratio, on guest memory in 1 MiB blocks.
type Prior struct {
	Algorithm string  `json:"algorithm"`
	Level     int     `json:"level"`
	Speed     float64 `json:"speed"` // bytes/s of input, one core
	Ratio     float64 `json:"ratio"` // input bytes per output byte
}

// storeSpeed stands for "no codec": the pipeline spends no encode time on
// a stored batch, so its speed is effectively unbounded.
const storeSpeed = 1e12

// DefaultPriors are measured on this project's machines
// (/work/shared/reference/baselines.md, "Codecs on real guest memory", 1 MiB
// blocks; docs/modes.md). s2 levels 2-3 and lz4 HC were measured in the
// same way by BenchmarkLadder relative to s2 level 1 and scaled to the
// baseline's s2 figure. Algorithms are the codecs' Capabilities names.
func DefaultPriors() []Prior {
	return []Prior{
		{"s2", 1, 740e6, 2.14},
		{"s2", 2, 390e6, 2.42},
		{"s2", 3, 15e6, 2.59},
		{"lz4-block", 0, 330e6, 2.11},
		{"lz4-block", 1, 52e6, 2.46},
		{"lz4-block", 9, 18e6, 2.47},
		{"zstd", 1, 265e6, 2.64},
		{"zstd", 2, 220e6, 2.74},
		{"zstd", 3, 95e6, 2.79},
		{"zstd", 4, 20e6, 2.90},
	}
}

// Step is one rung of the ladder the controller climbs: a codec and level
// with its expected speed and ratio. Codec 0 stores batches.
type Step struct {
	Choice pipeline.Choice
	Name   string // "zstd:2", "store"
	Speed  float64
	Ratio  float64
}

// Ladder is the set of useful choices of a session, lightest (fastest)
// first, each heavier step compressing better than the one before.
type Ladder []Step

// BuildLadder keeps, of the session's codecs and their levels, those with
// a prior, plus storing, and drops every step that another beats on both
// speed and ratio (lz4 when s2 is there, for instance). Codecs without a
// prior are left to manual choice.
func BuildLadder(codecs []pipeline.Codec, priors []Prior) Ladder {
	if priors == nil {
		priors = DefaultPriors()
	}
	all := Ladder{{Choice: pipeline.Choice{}, Name: "store", Speed: storeSpeed, Ratio: 1}}
	for _, c := range codecs {
		if c.ID == 0 || c.Codec == nil {
			continue
		}
		caps := c.Codec.Capabilities()
		for _, p := range priors {
			if p.Algorithm != caps.Algorithm || !caps.Levels.Contains(p.Level) || !(p.Speed > 0) || !(p.Ratio >= 1) {
				continue
			}
			all = append(all, Step{
				Choice: pipeline.Choice{Codec: c.ID, Level: p.Level},
				Name:   fmt.Sprintf("%s:%d", caps.Algorithm, p.Level),
				Speed:  p.Speed, Ratio: p.Ratio,
			})
		}
	}
	// Pareto front: sort by speed, fastest first, and keep a step only if
	// it compresses better than every faster one.
	slices.SortStableFunc(all, func(a, b Step) int {
		switch {
		case a.Speed > b.Speed:
			return -1
		case a.Speed < b.Speed:
			return 1
		case a.Ratio > b.Ratio:
			return -1
		case a.Ratio < b.Ratio:
			return 1
		}
		return 0
	})
	var l Ladder
	best := 0.0
	for _, s := range all {
		if s.Ratio > best {
			l = append(l, s)
			best = s.Ratio
		}
	}
	return l
}

// Names lists the steps' names, lightest first.
func (l Ladder) Names() []string {
	names := make([]string, len(l))
	for i, st := range l {
		names[i] = st.Name
	}
	return names
}

// Index returns the position of a choice, or -1.
func (l Ladder) Index(c pipeline.Choice) int {
	for i, s := range l {
		if s.Choice == c {
			return i
		}
	}
	return -1
}

// throughput is the stream rate a step can sustain: the slower of what
// `cores` encoders produce and what the link carries once compressed.
func throughput(speed, ratio, cores, link float64) float64 {
	cpu := speed * cores
	if link <= 0 {
		return cpu
	}
	return math.Min(cpu, link*ratio)
}

// Best returns the index of the step with the highest throughput on a link
// of the given rate (bytes/s) with `cores` encoders. Within tolerance (a
// fraction) of the best, bytesFirst prefers the heavier step and
// throughput-first the lighter one.
func (l Ladder) Best(link, cores, tolerance float64, bytesFirst bool) int {
	if len(l) == 0 {
		return -1
	}
	top := 0.0
	for _, s := range l {
		top = math.Max(top, throughput(s.Speed, s.Ratio, cores, link))
	}
	pick := -1
	for i, s := range l {
		if throughput(s.Speed, s.Ratio, cores, link) >= top*(1-tolerance) {
			pick = i
			if !bytesFirst {
				break
			}
		}
	}
	return pick
}

// Crossover returns the link rate (bytes/s) above which step i+1 (heavier)
// stops beating step i with `cores` encoders, or 0 when it never does.
// docs/modes.md derives the default thresholds from these.
func (l Ladder) Crossover(i int, cores float64) float64 {
	if i < 0 || i+1 >= len(l) {
		return 0
	}
	a, b := l[i], l[i+1]
	// The heavier step wins while it is link-bound or its CPU rate still
	// beats the lighter step's link-bound rate: up to where
	// min(b.Speed*cores, L*b.Ratio) = min(a.Speed*cores, L*a.Ratio).
	// b is heavier: b.Speed < a.Speed and b.Ratio > a.Ratio. For L below
	// b.Speed*cores/b.Ratio, b wins outright; above, b's rate is flat and a
	// catches up at L = b.Speed*cores/a.Ratio, unless a is CPU-bound first.
	l2 := b.Speed * cores / a.Ratio
	if a.Speed*cores <= b.Speed*cores {
		return 0
	}
	return l2
}
