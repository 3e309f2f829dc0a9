// Package units parses the human-written quantities that configuration
// files and command lines use (link rates), once for every package.
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseBits reads a rate in bits per second written like "100mbit",
// "1.5Gbit/s", "800k", "10g" or "250000000", and returns bits per second.
// Suffixes k, m, g, t are decimal (powers of 1000).
func ParseBits(s string) (float64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	for _, suf := range []string{"bit/s", "bps", "bit", "b/s"} {
		if strings.HasSuffix(t, suf) {
			t = strings.TrimSuffix(t, suf)
			break
		}
	}
	t = strings.TrimSpace(t)
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1e3
		case 'm':
			mult = 1e6
		case 'g':
			mult = 1e9
		case 't':
			mult = 1e12
		}
		if mult != 1 {
			t = strings.TrimSpace(t[:n-1])
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: not a number of bits per second", s)
	}
	return v * mult, nil
}
