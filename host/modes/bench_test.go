package modes

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pipeline"
)

// benchSample is guest memory to measure codecs on: 16 MiB of a real QEMU
// stream of the test guest when one was captured ($DWCP_STREAMS, default
// /tmp/dwcp-streams, see host/internal/testguest), else memory-like
// synthetic data (reported in the benchmark's name).
func benchSample(b *testing.B) ([]byte, string) {
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	if f, err := os.Open(filepath.Join(dir, "single.bin")); err == nil {
		defer f.Close()
		buf := make([]byte, 16<<20)
		// Past the first 40 MiB: the guest's ROMs and low memory are not
		// typical of it.
		if _, err := f.Seek(40<<20, io.SeekStart); err == nil {
			if n, _ := io.ReadFull(f, buf); n == len(buf) {
				return buf, "stream"
			}
		}
	}
	return memoryLike(16<<20, 7), "synthetic"
}

// measure encodes sample in 1 MiB blocks with one step and returns its
// speed (bytes/s) and ratio.
func measure(b *testing.B, l Ladder, codecs []pipeline.Codec, step Step, sample []byte) (float64, float64) {
	if step.Choice.Codec == 0 {
		return storeSpeed, 1
	}
	var c pipeline.Codec
	for _, x := range codecs {
		if x.ID == step.Choice.Codec {
			c = x
		}
	}
	var dst []byte
	out := 0
	t0 := time.Now()
	for off := 0; off+1<<20 <= len(sample); off += 1 << 20 {
		var err error
		dst, err = c.Codec.Encode(dst[:0], sample[off:off+1<<20], step.Choice.Level)
		if err != nil {
			b.Fatal(err)
		}
		out += len(dst)
	}
	return float64(len(sample)) / time.Since(t0).Seconds(), float64(len(sample)) / float64(out)
}

// BenchmarkLadder measures every step of the ladder on guest memory, with
// s2:1 measured in the same iteration as the baseline: speed_vs_s2 is the
// ratio the priors' unmeasured entries were scaled by.
func BenchmarkLadder(b *testing.B) {
	sample, kind := benchSample(b)
	codecs := allCodecs()
	l := BuildLadder(codecs, nil)
	base := l[l.Index(pipeline.Choice{Codec: 2, Level: 1})]
	for _, st := range l[1:] {
		b.Run(kind+"/"+st.Name, func(b *testing.B) {
			b.SetBytes(int64(len(sample)))
			var sp, ra, bs float64
			for range b.N {
				s, r := measure(b, l, codecs, st, sample)
				b0, _ := measure(b, l, codecs, base, sample)
				sp, ra, bs = sp+s, r, bs+b0
			}
			b.ReportMetric(sp/float64(b.N)/1e6, "MB/s")
			b.ReportMetric(ra, "ratio")
			b.ReportMetric(sp/bs, "speed_vs_s2")
		})
	}
}

// BenchmarkThresholdDerivation measures the ladder and reports where the
// model built from those speeds changes its mind, against the same figure
// from the default priors (docs/modes.md derives the defaults from it):
// dc_gbit is the lowest link rate from which no zstd level is the fastest
// pipeline with two encoders, strong_mbit the highest at which a strong
// zstd level (3 or 4) still is, bytes first, with one.
func BenchmarkThresholdDerivation(b *testing.B) {
	sample, _ := benchSample(b)
	codecs := allCodecs()
	def := BuildLadder(codecs, nil)
	for range b.N {
		var priors []Prior
		for _, st := range def[1:] {
			sp, ra := measure(b, def, codecs, st, sample)
			alg := st.Name[:strings.LastIndexByte(st.Name, ':')]
			priors = append(priors, Prior{Algorithm: alg, Level: st.Choice.Level, Speed: sp, Ratio: ra})
		}
		m := BuildLadder(codecs, priors)
		dc, strong := derivedThresholds(m)
		dcDef, strongDef := derivedThresholds(def)
		b.ReportMetric(dc*8/1e9, "dc_gbit")
		b.ReportMetric(strong*8/1e6, "strong_mbit")
		b.ReportMetric(dc/dcDef, "dc_vs_prior")
		b.ReportMetric(strong/strongDef, "strong_vs_prior")
	}
}

// derivedThresholds scans link rates from 1 Mbit/s to 100 Gbit/s in 1 %
// steps for the two points BenchmarkThresholdDerivation reports.
func derivedThresholds(l Ladder) (dc, strong float64) {
	isZstd := func(i int) bool { return strings.HasPrefix(l[i].Name, "zstd") }
	isStrong := func(i int) bool { return l[i].Name == "zstd:3" || l[i].Name == "zstd:4" }
	for bw := 1 * Mbit; bw <= 100*Gbit; bw *= 1.01 {
		if isStrong(l.Best(bw, 1, 0, true)) {
			strong = bw
		}
		if dc == 0 && !isZstd(l.Best(bw, 2, 0, false)) && bw > 10*Mbit {
			dc = bw
		}
	}
	return dc, strong
}

// BenchmarkControllerObserve is the controller's cost per batch, against
// a pipeline.FixedPolicy in the same run (the pipeline's default): it runs
// once per batch on the sending goroutine and must not allocate.
func BenchmarkControllerObserve(b *testing.B) {
	s, err := Plan(Hybrid, Path{RTT: time.Millisecond, Bandwidth: Gbit}, allCodecs(), PlanConfig{Cores: 2})
	if err != nil {
		b.Fatal(err)
	}
	c, err := NewController(ControllerConfig{Settings: s, DwellBatches: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	r := pipeline.BatchResult{Choice: s.Start, Decoded: 1 << 20, Wire: 380 << 10, Encode: 4 * time.Millisecond, SendWait: time.Millisecond}
	fixed := pipeline.FixedPolicy(s.Start)
	b.ReportAllocs()
	t0 := time.Now()
	for range b.N {
		fixed.Observe(r)
		_ = fixed.Choose()
	}
	base := time.Since(t0)
	b.ResetTimer()
	for range b.N {
		c.Observe(r)
		_ = c.Choose()
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed())/float64(max(base, 1)), "x_fixed")
}
