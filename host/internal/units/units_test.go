package units

import "testing"

func TestParseBits(t *testing.T) {
	for in, want := range map[string]float64{
		"100mbit": 100e6, "1.5Gbit/s": 1.5e9, "800k": 800e3, "10g": 10e9, "250000000": 250e6,
		" 2 Tbps ": 2e12, "300 mb/s": 300e6, "0": 0,
	} {
		got, err := ParseBits(in)
		if err != nil || got != want {
			t.Errorf("%q: %v %v, want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "fast", "mbit", "1e999", "NaN", "1x"} {
		if _, err := ParseBits(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func FuzzParseBits(f *testing.F) {
	f.Add("100mbit")
	f.Add("1.5Gbit/s")
	f.Fuzz(func(t *testing.T, s string) { _, _ = ParseBits(s) })
}
