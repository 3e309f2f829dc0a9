package modes

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/plugins/passthrough/passthroughcodec"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
)

// allCodecs is a session offering every in-tree codec.
func allCodecs() []pipeline.Codec {
	return []pipeline.Codec{
		{ID: 1, Algorithm: "zstd", Codec: zstdcodec.New()},
		{ID: 2, Algorithm: "s2", Codec: s2codec.New()},
		{ID: 3, Algorithm: "lz4-block", Codec: lz4codec.New()},
		{ID: 4, Algorithm: "passthrough", Codec: passthroughcodec.New()},
	}
}

func names(l Ladder) string {
	var s []string
	for _, st := range l {
		s = append(s, st.Name)
	}
	return strings.Join(s, " ")
}

func TestLadderIsTheParetoFront(t *testing.T) {
	l := BuildLadder(allCodecs(), nil)
	// lz4 is beaten by s2 on both speed and ratio, s2:3 by zstd:2, and the
	// passthrough codec has no prior: none of them is a step.
	want := "store s2:1 s2:2 zstd:1 zstd:2 zstd:3 zstd:4"
	if got := names(l); got != want {
		t.Fatalf("ladder %q, want %q", got, want)
	}
	for i := 1; i < len(l); i++ {
		if !(l[i].Speed < l[i-1].Speed && l[i].Ratio > l[i-1].Ratio) {
			t.Errorf("step %s does not trade speed for ratio against %s", l[i].Name, l[i-1].Name)
		}
	}
	if l.Index(pipeline.Choice{Codec: 1, Level: 2}) != 4 || l.Index(pipeline.Choice{Codec: 9}) != -1 {
		t.Error("Index")
	}
	// Without s2, lz4 takes its place.
	only := BuildLadder([]pipeline.Codec{{ID: 3, Algorithm: "lz4-block", Codec: lz4codec.New()}, {ID: 1, Algorithm: "zstd", Codec: zstdcodec.New()}}, nil)
	if got := names(only); got != "store lz4-block:0 zstd:1 zstd:2 zstd:3 zstd:4" {
		t.Errorf("lz4+zstd ladder %q", got)
	}
	if got := names(BuildLadder(nil, nil)); got != "store" {
		t.Errorf("no codecs: %q", got)
	}
}

// The default thresholds are where the model built from the measured
// codec speeds changes its mind (docs/modes.md).
func TestDefaultThresholdsFollowTheMeasuredCodecs(t *testing.T) {
	l := BuildLadder(allCodecs(), nil)
	th := DefaultThresholds()
	idx := func(name string) int {
		for i, s := range l {
			if s.Name == name {
				return i
			}
		}
		t.Fatalf("no step %s", name)
		return -1
	}
	// Two encode cores: above ~1.75 Gbit/s no zstd level is the fastest
	// pipeline; somewhat below it zstd is. The datacenter bar sits below
	// that crossover on purpose (it classifies the path, which the probe
	// measures through TLS; the controller picks the step).
	if b := l[l.Best(2*Gbit, 2, 0, false)]; strings.HasPrefix(b.Name, "zstd") {
		t.Errorf("at 2 Gbit/s the fastest step is %s", b.Name)
	}
	if b := l[l.Best(1.5*Gbit, 2, 0, false)]; !strings.HasPrefix(b.Name, "zstd") {
		t.Errorf("at 1.5 Gbit/s the fastest step is %s, want a zstd level", b.Name)
	}
	x := l.Crossover(idx("s2:2"), 2)
	if x < 1.5*Gbit || x > 2*Gbit || x < th.DatacenterMinBandwidth {
		t.Errorf("s2:2/zstd:1 crossover with 2 cores at %s, not in [1.5 Gbit/s, 2 Gbit/s] and above the datacenter bar", FormatRate(x))
	}
	// One encode core: below the internet bandwidth the strong zstd level
	// (3) beats the default one; with two, up to ~550 Mbit/s.
	x1 := l.Crossover(idx("zstd:2"), 1)
	x2 := l.Crossover(idx("zstd:2"), 2)
	if x1 < 250*Mbit || x1 > 350*Mbit || x2 < 500*Mbit || x2 > 600*Mbit {
		t.Errorf("zstd:2/zstd:3 crossover %s (1 core), %s (2 cores)", FormatRate(x1), FormatRate(x2))
	}
	if b := l[l.Best(th.InternetMaxBandwidth*0.9, 1, 0, true)]; b.Name != "zstd:3" {
		t.Errorf("just below the internet bandwidth on one core: %s, want zstd:3", b.Name)
	}
	// Crossover outside the ladder.
	if l.Crossover(-1, 2) != 0 || l.Crossover(len(l)-1, 2) != 0 {
		t.Error("crossover out of range")
	}
}

func TestLadderBounds(t *testing.T) {
	l := BuildLadder(allCodecs(), nil)
	for _, c := range []struct {
		m      Mode
		lo, hi string
	}{
		{Datacenter, "store", "zstd:2"},
		{Hybrid, "s2:1", "zstd:3"},
		{Internet, "s2:1", "zstd:4"},
	} {
		lo, hi := l.Bounds(c.m)
		if l[lo].Name != c.lo || l[hi].Name != c.hi {
			t.Errorf("%v: bounds %s..%s, want %s..%s", c.m, l[lo].Name, l[hi].Name, c.lo, c.hi)
		}
	}
	// A store-only ladder keeps its one step in every mode.
	s := BuildLadder(nil, nil)
	for _, m := range Modes {
		if lo, hi := s.Bounds(m); lo != 0 || hi != 0 {
			t.Errorf("%v on store only: %d..%d", m, lo, hi)
		}
	}
}

func TestPlan(t *testing.T) {
	lim := &SocketLimits{SetMax: 4 << 20, AutoMax: 4 << 20}
	cfg := PlanConfig{Cores: 2, Limits: lim}
	const ms = time.Millisecond
	for _, c := range []struct {
		mode      Mode
		path      Path
		start     string
		disabled  pagestage.Technique
		minStream int
		maxStream int
	}{
		// 4 Gbit/s fabric: s2, zero pages only, 2 streams per core.
		{Datacenter, Path{RTT: 500 * time.Microsecond, Bandwidth: 4 * Gbit}, "s2:1", pagestage.AllTechniques &^ pagestage.Zero, 4, 4},
		// 1.5 Gbit/s read on a short path (a probe that could not fill a
		// fat link reads like this): the model would pick zstd, but a
		// datacenter session starts at the lightest compressing step.
		{Datacenter, Path{RTT: 600 * time.Microsecond, Bandwidth: 1.5 * Gbit}, "s2:1", pagestage.AllTechniques &^ pagestage.Zero, 4, 4},
		// 25 Gbit/s: even s2 cannot keep up, so no codec.
		{Datacenter, Path{RTT: 100 * time.Microsecond, Bandwidth: 25 * Gbit}, "store", pagestage.AllTechniques &^ pagestage.Zero, 4, 4},
		// Metro 1 Gbit/s: zstd, bytes first among equals.
		{Hybrid, Path{RTT: 10 * ms, Bandwidth: Gbit}, "zstd:2", pagestage.Known, 4, 4},
		// Long-haul 1 Gbit/s 100 ms: strong zstd, a BDP of 12.5 MB needs
		// more connections than 4 MiB windows allow.
		{Internet, Path{RTT: 100 * ms, Bandwidth: Gbit}, "zstd:2", 0, 4, 4},
		// Thin internet path: the strongest level that still outruns it.
		{Internet, Path{RTT: 60 * ms, Bandwidth: 100 * Mbit}, "zstd:3", 0, 4, 4},
		{Internet, Path{RTT: 60 * ms, Bandwidth: 20 * Mbit}, "zstd:4", 0, 4, 4},
		// 1 % loss at 80 ms: one TCP connection carries ~1.8 Mbit/s.
		{Internet, Path{RTT: 80 * ms, Bandwidth: 200 * Mbit, Loss: 0.01}, "zstd:3", 0, 16, 16},
	} {
		s, err := Plan(c.mode, c.path, allCodecs(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		start := s.Ladder[s.Ladder.Index(s.Start)].Name
		if start != c.start || s.PageDisabled != c.disabled || !s.PageStage || s.Streams < c.minStream || s.Streams > c.maxStream {
			t.Errorf("%v %v: start %s disabled %v streams %d; want %s %v %d..%d\n%s", c.mode, c.path, start, s.PageDisabled, s.Streams,
				c.start, c.disabled, c.minStream, c.maxStream, strings.Join(s.Why, "\n"))
		}
		if s.Ladder.Index(s.Start) < s.MinStep || s.Ladder.Index(s.Start) > s.MaxStep {
			t.Errorf("%v: start outside the mode's bounds", c.mode)
		}
		bdp := c.path.Bandwidth * c.path.RTT.Seconds()
		if s.WindowBytes < int64(2*bdp) || s.WindowBytes < 16<<20 {
			t.Errorf("%v %v: window %d below 2 BDP %v", c.mode, c.path, s.WindowBytes, 2*bdp)
		}
		if s.BatchBytes < 256<<10 || s.BatchBytes > 2<<20 || s.CheckpointBytes < 4<<20 {
			t.Errorf("%v: batch %d checkpoint %d", c.mode, s.BatchBytes, s.CheckpointBytes)
		}
		if c.mode == Internet && s.BatchBytes < 1<<20 {
			t.Errorf("internet batch %d below 1 MiB", s.BatchBytes)
		}
	}
	// Socket buffers: a BDP per connection within wmem_max is set, above
	// it autotuning is left alone.
	s, _ := Plan(Hybrid, Path{RTT: 10 * ms, Bandwidth: Gbit}, allCodecs(), cfg)
	if s.SocketBuffer != max(1_250_000/s.Streams, 128<<10) {
		t.Errorf("hybrid socket buffer %d", s.SocketBuffer)
	}
	small := PlanConfig{Cores: 2, Limits: &SocketLimits{SetMax: 212992, AutoMax: 4 << 20}}
	s, _ = Plan(Internet, Path{RTT: 100 * ms, Bandwidth: Gbit}, allCodecs(), small)
	if s.SocketBuffer != 0 {
		t.Errorf("BDP per stream over wmem_max: socket buffer %d, want autotuning", s.SocketBuffer)
	}
	// 3 Gbit/s at 50 ms with 4 MiB autotuning limit: 18.75 MB BDP needs 5.
	s, _ = Plan(Internet, Path{RTT: 50 * ms, Bandwidth: 3 * Gbit}, allCodecs(), cfg)
	if s.Streams != 5 {
		t.Errorf("3 Gbit/s 50 ms: %d streams, want 5", s.Streams)
	}
	// Unknown bandwidth plans for a typical link of the mode.
	s, err := Plan(Internet, Path{RTT: 60 * ms}, allCodecs(), cfg)
	if err != nil || s.ExpectedRate != int64(100*Mbit) {
		t.Errorf("unknown bandwidth: rate %d, %v", s.ExpectedRate, err)
	}
	if _, err := Plan(Mode(9), Path{}, nil, cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("bad mode: %v", err)
	}
	if _, err := Plan(Hybrid, Path{Loss: 2}, nil, cfg); !errors.Is(err, ErrBadConfig) {
		t.Errorf("bad path: %v", err)
	}
	// Without codecs every mode stores.
	for _, m := range Modes {
		s, err := Plan(m, Path{RTT: ms, Bandwidth: Gbit}, nil, cfg)
		if err != nil || s.Start != (pipeline.Choice{}) {
			t.Errorf("%v without codecs: %+v %v", m, s.Start, err)
		}
	}
}

// The user's fixed step (PlanConfig.Step) is the whole ladder range, in any
// mode, even a step the mode would not use; a step not on the ladder is
// refused with the steps that are.
func TestPlanFixesTheUsersStep(t *testing.T) {
	path := Path{RTT: 60 * time.Millisecond, Bandwidth: 100 * Mbit}
	store := pipeline.Choice{}
	s, err := Plan(Internet, path, allCodecs(), PlanConfig{Cores: 2, Step: &store})
	if err != nil {
		t.Fatal(err)
	}
	i := s.Ladder.Index(store)
	if !s.Pinned || s.MinStep != i || s.MaxStep != i || s.Start != store {
		t.Errorf("store fixed in internet mode: pinned %v, steps %d..%d, start %+v (store is %d)", s.Pinned, s.MinStep, s.MaxStep, s.Start, i)
	}
	if _, err := NewController(ControllerConfig{Settings: s, Path: path}); err != nil {
		t.Errorf("controller for a fixed step: %v", err)
	}
	bad := pipeline.Choice{Codec: 1, Level: 99}
	_, err = Plan(Datacenter, path, allCodecs(), PlanConfig{Cores: 2, Step: &bad})
	if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "s2:1") {
		t.Errorf("a step off the ladder: %v", err)
	}
}
