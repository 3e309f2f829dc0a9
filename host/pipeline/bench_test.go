package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// Benchmarks of the whole data path (source and destination in one
// process, one compression worker each, so figures are per core of
// compression), reported against baselines measured in the same run:
// plain copy speed, and the zstd command-line tool on the same bytes.

type benchInput struct {
	name string
	data []byte
}

func benchInputs(b *testing.B) []benchInput {
	var in []benchInput
	if !testing.Short() {
		// Real QEMU streams of the test guest (captured once, cached).
		for _, n := range []string{"single.bin", "live.bin"} {
			if data, err := readStream(b, n); err == nil {
				in = append(in, benchInput{"qemu-" + n[:len(n)-4], data})
			}
		}
	}
	for _, p := range []string{"random", "zeros", "repeating", "sparse"} {
		pat, ok := conformance.PatternByName(p)
		if !ok {
			b.Fatalf("no pattern %s", p)
		}
		in = append(in, benchInput{p, pat.Bytes(32<<20, 1)})
	}
	return in
}

var streamCache sync.Map

func readStream(b *testing.B, name string) ([]byte, error) {
	if v, ok := streamCache.Load(name); ok {
		return v.([]byte), nil
	}
	data, err := os.ReadFile(testguest.StreamPath(b, name))
	if err == nil {
		streamCache.Store(name, data)
	}
	return data, err
}

type benchCodec struct {
	name  string
	codec codec.Codec
	level int
	page  bool
}

var benchCodecs = []benchCodec{
	{"none", nil, 0, false},
	{"s2-1", s2codec.New(), 1, false},
	{"lz4-0", lz4codec.New(), 0, false},
	{"zstd-1", zstdcodec.New(), 1, false},
	{"zstd-2", zstdcodec.New(), 2, false},
	{"zstd-2+pages", zstdcodec.New(), 2, true},
	{"zstd-3+pages", zstdcodec.New(), 3, true},
}

// runOnce carries data through Send and Receive and returns the wire bytes.
func runOnce(b *testing.B, data []byte, bc benchCodec) uint64 {
	var srcCodecs []Codec
	dst := map[string]codec.Codec{}
	choice := Choice{}
	if bc.codec != nil {
		algo := bc.codec.Capabilities().Algorithm
		srcCodecs = []Codec{{ID: 1, Algorithm: algo, Codec: bc.codec}}
		dst[algo] = bc.codec
		choice = Choice{Codec: 1, Level: bc.level}
	}
	cfg := SourceConfig{Codecs: srcCodecs, Policy: FixedPolicy(choice), Workers: 1}
	if bc.page {
		cfg.PageStage = DefaultPageStage()
	}
	a, c := memPipe()
	defer a.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	var dstErr error
	var n int
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _, dstErr = Receive(ctx, c, DestConfig{Codecs: dst, PageStage: PageStageDecoder, Workers: 1,
			Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) {
				return writerFunc(func(p []byte) (int, error) { n += len(p); return len(p), nil }), nil, nil
			}}, nil)
	}()
	sum, err := Send(ctx, bytes.NewReader(data), a, cfg, nil)
	wg.Wait()
	if err != nil || dstErr != nil || n != len(data) {
		b.Fatalf("send %v receive %v delivered %d of %d", err, dstErr, n, len(data))
	}
	return sum.WireBytes
}

// zstdCLI returns the size of `zstd ARGS` on data, or 0 without the tool.
func zstdCLI(b *testing.B, data []byte, args ...string) int {
	if _, err := exec.LookPath("zstd"); err != nil {
		return 0
	}
	cmd := exec.Command("zstd", append(args, "-c", "-T1", "-q")...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("zstd %v: %v", args, err)
	}
	return len(out)
}

var zstdBaselines sync.Map

func zstdBaseline(b *testing.B, name string, data []byte, args ...string) int {
	key := fmt.Sprint(name, args)
	if v, ok := zstdBaselines.Load(key); ok {
		return v.(int)
	}
	n := zstdCLI(b, data, args...)
	zstdBaselines.Store(key, n)
	return n
}

// BenchmarkPipeline reports, per input and codec: MB/s through source and
// destination, the compression ratio, and the wire bytes relative to
// `zstd -3` (and `zstd -3 --long` for QEMU streams) of the same bytes.
func BenchmarkPipeline(b *testing.B) {
	for _, in := range benchInputs(b) {
		for _, bc := range benchCodecs {
			b.Run(in.name+"/"+bc.name, func(b *testing.B) {
				b.SetBytes(int64(len(in.data)))
				var wire uint64
				for b.Loop() {
					wire = runOnce(b, in.data, bc)
				}
				b.ReportMetric(float64(len(in.data))/float64(wire), "ratio")
				if z3 := zstdBaseline(b, in.name, in.data, "-3"); z3 > 0 {
					b.ReportMetric(float64(wire)/float64(z3), "wire/zstd-3")
				}
				if len(in.data) > 64<<20 {
					if zl := zstdBaseline(b, in.name, in.data, "-3", "--long=27"); zl > 0 {
						b.ReportMetric(float64(wire)/float64(zl), "wire/zstd-3-long")
					}
				}
			})
		}
	}
}

// BenchmarkPipelineVsZstd19 compares against `zstd -19` on a 16 MiB prefix
// of the real stream (zstd -19 runs at about 2 MB/s here).
func BenchmarkPipelineVsZstd19(b *testing.B) {
	data, err := readStream(b, "single.bin")
	if err != nil {
		b.Skip(err)
	}
	data = data[:16<<20]
	for _, bc := range benchCodecs[4:] {
		b.Run(bc.name, func(b *testing.B) {
			var wire uint64
			for b.Loop() {
				wire = runOnce(b, data, bc)
			}
			if z := zstdBaseline(b, "prefix16", data, "-19"); z > 0 {
				b.ReportMetric(float64(wire)/float64(z), "wire/zstd-19")
			}
		})
	}
}

// BenchmarkCopyBaseline is the speed of moving the same bytes with one
// memory copy, for reading the MB/s above as a ratio.
func BenchmarkCopyBaseline(b *testing.B) {
	data := make([]byte, 32<<20)
	dst := make([]byte, len(data))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		copy(dst, data)
	}
}
