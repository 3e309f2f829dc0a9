package benchreport

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Summary describes repeated measurements of one quantity.
type Summary struct {
	N                      int
	Min, Median, Max, Mean float64
	P95                    float64
}

// Summarize computes a Summary; an empty input gives N == 0.
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return Summary{
		N: len(s), Min: s[0], Max: s[len(s)-1], Mean: sum / float64(len(s)),
		Median: Percentile(s, 50), P95: Percentile(s, 95),
	}
}

// Percentile returns the p-th percentile (0..100) of sorted samples, by
// linear interpolation between closest ranks.
func Percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	if len(sorted) == 1 {
		return sorted[0]
	}
	r := p / 100 * float64(len(sorted)-1)
	lo := int(math.Floor(r))
	hi := min(lo+1, len(sorted)-1)
	return sorted[lo] + (r-float64(lo))*(sorted[hi]-sorted[lo])
}

// Cell renders "median (min–max, n=N)" with the given decimals and unit.
func (s Summary) Cell(decimals int, unit string) Cell {
	if s.N == 0 {
		return Missing("no samples")
	}
	if unit != "" {
		unit = " " + unit
	}
	if s.N == 1 {
		return Textf("%.*f%s (n=1)", decimals, s.Median, unit)
	}
	return Textf("%.*f%s (%.*f–%.*f, n=%d)", decimals, s.Median, unit, decimals, s.Min, decimals, s.Max, s.N)
}

// Durations converts durations to seconds for Summarize.
func Durations(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = v.Seconds()
	}
	return out
}

// MBps is bytes per second in MB/s (10^6).
func MBps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return math.NaN()
	}
	return float64(bytes) / d.Seconds() / 1e6
}

// RatioOf is a/b as a ratio cell, or a missing cell when b is zero or a value is NaN.
func RatioOf(a, b float64) Cell {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return Missing(fmt.Sprintf("no baseline (%.3g / %.3g)", a, b))
	}
	return Ratio(a / b)
}
