// Package codectest holds the benchmark and fuzz bodies that every DWCP
// codec package runs, so the numbers in docs/codecs.md come from one
// procedure and every decoder is fuzzed the same way.
//
// It owns test procedure only. It must not hold codec logic, and nothing
// outside _test.go files may import it.
package codectest

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// BenchSizes are the block sizes benchmarked: a page, a batch of 16
// pages, a large block.
var BenchSizes = []int{4 << 10, 64 << 10, 1 << 20}

// Seed fixes the benchmark data so runs compare.
const Seed = 1

// RealMemory returns n bytes of the real-memory-like pattern.
func RealMemory(n int) []byte {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	return p.Bytes(n, Seed)
}

func sizeName(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}

// Warm calls f enough times to touch every entry of a codec's pools (they
// hold up to about twice GOMAXPROCS states, built on first use), so that
// allocation counts measured afterwards are the steady state.
func Warm(f func()) {
	for range 4*runtime.GOMAXPROCS(0) + 4 {
		f()
	}
}

// benchSpan is how much real-memory-like data each size cycles through, so
// a 4 KiB benchmark sees 256 different pages (zero, text, code, random...)
// rather than whichever kind page 0 happens to be.
const benchSpan = 4 << 20

// Bench runs Encode and Decode benchmarks of c at each level and size on
// the real-memory-like pattern, cycling through benchSpan bytes of blocks
// and reusing dst so the allocation count is the codec's own. It reports
// MB/s of uncompressed data (SetBytes) and the compression ratio over all
// the blocks.
func Bench(b *testing.B, c codec.Codec, levels []int) {
	data := RealMemory(benchSpan)
	for _, level := range levels {
		for _, n := range BenchSizes {
			blocks := make([][]byte, 0, benchSpan/n)
			encs := make([][]byte, 0, benchSpan/n)
			var in, out int
			for off := 0; off+n <= len(data); off += n {
				enc, err := c.Encode(nil, data[off:off+n], level)
				if err != nil {
					b.Fatalf("encode level %d: %v", level, err)
				}
				blocks, encs = append(blocks, data[off:off+n]), append(encs, enc)
				in, out = in+n, out+len(enc)
			}
			ratio := float64(in) / float64(out)
			Warm(func() {
				_, _ = c.Encode(nil, blocks[0], level)
				_, _ = c.Decode(nil, encs[0], n)
			})
			b.Run(fmt.Sprintf("Encode/level=%d/%s", level, sizeName(n)), func(b *testing.B) {
				dst := make([]byte, 0, c.Capabilities().Bound.Max(n))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					var err error
					if dst, err = c.Encode(dst[:0], blocks[i], level); err != nil {
						b.Fatal(err)
					}
					if i++; i == len(blocks) {
						i = 0
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
			b.Run(fmt.Sprintf("Decode/level=%d/%s", level, sizeName(n)), func(b *testing.B) {
				dst := make([]byte, 0, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					var err error
					if dst, err = c.Decode(dst[:0], encs[i], n); err != nil {
						b.Fatal(err)
					}
					if i++; i == len(blocks) {
						i = 0
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
			if got, err := c.Decode(nil, encs[len(encs)-1], n); err != nil || !bytes.Equal(got, blocks[len(blocks)-1]) {
				b.Fatalf("level %d, %d bytes: round trip failed: %v", level, n, err)
			}
		}
	}
}

// FuzzMaxSize is the decode limit the fuzz body uses: large enough for
// every seed, small enough that a bomb is caught fast.
const FuzzMaxSize = 1 << 20

// Fuzz seeds f with valid encodings of every pattern at several sizes and
// at each of levels, plus extra, then checks for any input that Decode
// never panics, classifies its errors, honours maxSize and dst's prefix,
// and that whatever it accepts survives an Encode/Decode round trip.
func Fuzz(f *testing.F, c codec.Codec, levels []int, extra ...[]byte) {
	for _, p := range conformance.Patterns() {
		for _, n := range []int{1, 100, 4 << 10, 20000} {
			src := p.Bytes(n, Seed)
			for _, l := range levels {
				enc, err := c.Encode(nil, src, l)
				if err != nil {
					f.Fatalf("seed %s/%d level %d: %v", p.Name, n, l, err)
				}
				f.Add(enc)
			}
		}
	}
	for _, e := range extra {
		f.Add(e)
	}
	def := c.Capabilities().Levels.Default
	f.Fuzz(func(t *testing.T, data []byte) {
		prefix := []byte("prefix")
		out, err := c.Decode(bytes.Clone(prefix), data, FuzzMaxSize)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) && !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("Decode error %q wraps neither ErrCorruptInput nor ErrTooLarge", err)
			}
			return
		}
		if !bytes.HasPrefix(out, prefix) {
			t.Fatalf("Decode did not preserve dst's prefix")
		}
		got := out[len(prefix):]
		if len(got) > FuzzMaxSize {
			t.Fatalf("Decode returned %d bytes over maxSize %d", len(got), FuzzMaxSize)
		}
		enc, err := c.Encode(nil, got, def)
		if err != nil {
			t.Fatalf("re-encode of accepted output: %v", err)
		}
		back, err := c.Decode(nil, enc, len(got))
		if err != nil {
			t.Fatalf("decode of re-encoded output: %v", err)
		}
		if !bytes.Equal(back, got) {
			t.Fatalf("re-encoded output does not round-trip")
		}
	})
}

// Conformance returns the kit options the codec packages run with: the
// kit's defaults, but under -race (where the detector makes a codec's slow
// levels crawl) an 8 MiB huge block and a sample of levels; the plain run
// covers every level at full size.
func Conformance() conformance.CodecOptions {
	if RaceEnabled {
		return conformance.CodecOptions{HugeSize: 8 << 20, MaxLevels: 4}
	}
	return conformance.CodecOptions{}
}

// SkipAllocsUnderRace skips an allocation-count test in a -race build.
func SkipAllocsUnderRace(t *testing.T) {
	t.Helper()
	if RaceEnabled {
		t.Skip("allocation counts are meaningless under -race (sync.Pool drops items at random)")
	}
}
