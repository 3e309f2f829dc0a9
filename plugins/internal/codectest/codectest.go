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

// Bench runs Encode and Decode benchmarks of c at each level and size on
// the real-memory-like pattern, reusing dst so the allocation count is the
// codec's own. It reports MB/s of uncompressed data (SetBytes) and the
// compression ratio.
func Bench(b *testing.B, c codec.Codec, levels []int) {
	for _, level := range levels {
		for _, n := range BenchSizes {
			src := RealMemory(n)
			enc, err := c.Encode(nil, src, level)
			if err != nil {
				b.Fatalf("encode level %d: %v", level, err)
			}
			ratio := float64(n) / float64(len(enc))
			b.Run(fmt.Sprintf("Encode/level=%d/%s", level, sizeName(n)), func(b *testing.B) {
				dst := make([]byte, 0, c.Capabilities().Bound.Max(n))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					dst, err = c.Encode(dst[:0], src, level)
					if err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(ratio, "ratio")
			})
			b.Run(fmt.Sprintf("Decode/level=%d/%s", level, sizeName(n)), func(b *testing.B) {
				dst := make([]byte, 0, n)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					dst, err = c.Decode(dst[:0], enc, n)
					if err != nil {
						b.Fatal(err)
					}
				}
				if !bytes.Equal(dst, src) {
					b.Fatal("decoded bytes differ from the source")
				}
				b.ReportMetric(ratio, "ratio")
			})
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
