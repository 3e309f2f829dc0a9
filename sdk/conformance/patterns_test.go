package conformance_test

import (
	"bytes"
	"compress/flate"
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
)

func TestPatternsDeterministic(t *testing.T) {
	for _, p := range conformance.Patterns() {
		a := p.Bytes(3*conformance.PageSize+123, 7)
		b := p.Bytes(3*conformance.PageSize+123, 7)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: same seed, different bytes", p.Name)
		}
		long := p.Bytes(5*conformance.PageSize, 7)
		if !bytes.Equal(long[:len(a)], a) {
			t.Errorf("%s: a shorter buffer is not a prefix of a longer one", p.Name)
		}
		if p.Name != conformance.PatternZeros && bytes.Equal(a, p.Bytes(len(a), 8)) {
			t.Errorf("%s: seed does not change the data", p.Name)
		}
		if q, ok := conformance.PatternByName(p.Name); !ok || q.Name != p.Name {
			t.Errorf("PatternByName(%q) failed", p.Name)
		}
	}
	if _, ok := conformance.PatternByName("nope"); ok {
		t.Error("unknown name found")
	}
}

// Fill must not write past the slice it is given, even when its capacity
// runs on (generators that append are the risk).
func TestFillStaysInBounds(t *testing.T) {
	for _, p := range conformance.Patterns() {
		buf := bytes.Repeat([]byte{0xEE}, 3*conformance.PageSize)
		p.Fill(buf[:conformance.PageSize+100], 3)
		for i, c := range buf[conformance.PageSize+100:] {
			if c != 0xEE {
				t.Fatalf("%s wrote byte %d past the slice", p.Name, i)
			}
		}
	}
}

func ratio(t *testing.T, b []byte) float64 {
	t.Helper()
	var out bytes.Buffer
	w, _ := flate.NewWriter(&out, flate.BestSpeed)
	_, _ = w.Write(b)
	_ = w.Close()
	return float64(len(b)) / float64(out.Len())
}

// The patterns span the range a codec meets: incompressible, moderately
// compressible like real memory, and trivially compressible.
func TestPatternCompressibility(t *testing.T) {
	r := map[string]float64{}
	for _, p := range conformance.Patterns() {
		r[p.Name] = ratio(t, p.Bytes(1<<20, 1))
	}
	t.Logf("flate BestSpeed ratios: %v", r)
	if r[conformance.PatternRandom] > 1.01 {
		t.Errorf("random compresses: %.2f", r[conformance.PatternRandom])
	}
	for _, name := range []string{conformance.PatternZeros, conformance.PatternRepeating, conformance.PatternSparse} {
		if r[name] < 20 {
			t.Errorf("%s ratio %.2f, want highly compressible", name, r[name])
		}
	}
	if x := r[conformance.PatternText]; x < 2 || x > 6 {
		t.Errorf("text ratio %.2f, want 2..6", x)
	}
	if x := r[conformance.PatternRealMemory]; x < 1.8 || x > 4 {
		t.Errorf("real-memory-like ratio %.2f, want 1.8..4 (real guest streams: 2.1-3.1)", x)
	}
}

func TestRealMemoryMix(t *testing.T) {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	b := p.Bytes(4096*conformance.PageSize, 1)
	zero := make([]byte, conformance.PageSize)
	zeros := 0
	for i := 0; i < len(b); i += conformance.PageSize {
		if bytes.Equal(b[i:i+conformance.PageSize], zero) {
			zeros++
		}
	}
	if f := float64(zeros) / 4096; f < 0.2 || f > 0.3 {
		t.Errorf("zero-page fraction %.3f, want about 0.25", f)
	}
	seen := map[string]bool{}
	dups, nonZero := 0, 0
	for i := 0; i < len(b); i += conformance.PageSize {
		pg := string(b[i : i+conformance.PageSize])
		if pg == string(zero) {
			continue
		}
		nonZero++
		if seen[pg] {
			dups++
		}
		seen[pg] = true
	}
	if f := float64(dups) / float64(nonZero); f < 0.03 || f > 0.08 {
		t.Errorf("duplicate non-zero pages %.3f, want about 0.05 (a real guest: 0.044)", f)
	}
}
