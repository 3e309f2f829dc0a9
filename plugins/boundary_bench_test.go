package plugins_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// built holds plugin binaries compiled once per test binary run.
var built struct {
	sync.Mutex
	dir  string
	bins map[string]string
}

// builtPlugin returns the path of ./name compiled into a directory shared
// by every benchmark of this run (TestMain removes it).
func builtPlugin(b *testing.B, name string) string {
	built.Lock()
	defer built.Unlock()
	if built.dir == "" {
		dir, err := os.MkdirTemp("", "dwcp-plugins-bench-")
		if err != nil {
			b.Fatal(err)
		}
		built.dir, built.bins = dir, map[string]string{}
	}
	if p, ok := built.bins[name]; ok {
		return p
	}
	p := buildPlugins(b, built.dir, name)[name]
	built.bins[name] = p
	return p
}

func removeBuilt() {
	built.Lock()
	defer built.Unlock()
	if built.dir != "" {
		_ = os.RemoveAll(built.dir)
	}
}

// runOps performs n operations split across workers goroutines, each with
// its own reused dst, and returns the wall time. It is the same procedure
// for the in-process codec and the plugin so the two are comparable.
func runOps(b *testing.B, n, workers int, op func(dst []byte) ([]byte, error), dstCap int) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Go(func() {
			dst := make([]byte, 0, dstCap)
			var err error
			for range share {
				if dst, err = op(dst[:0]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return elapsed
}

// BenchmarkBoundary runs the same codec in-process and behind the plugin
// boundary (the built binary, on the shared-memory path and on the gRPC
// fallback) at the same concurrency, and reports plugin time over
// in-process time for the same work as "plugin/inproc" (1.00 = no
// overhead; targets: ≤ 1.05 at 1 MiB, ≤ 1.15 at 64 KiB). ns/op and MB/s
// are the plugin path's; the in-process baseline runs inside each
// sub-benchmark with the timer stopped, so both see the same machine load.
func BenchmarkBoundary(b *testing.B) {
	workers := runtime.GOMAXPROCS(0)
	codecs := []struct {
		name  string
		local codec.Codec
		level int
	}{
		{"s2", s2codec.New(), s2codec.LevelFast},
		{"zstd", zstdcodec.New(), zstdcodec.LevelFastest},
	}
	for _, cc := range codecs {
		bin := builtPlugin(b, cc.name)
		for _, path := range []struct {
			name    string
			disable bool
		}{{"shm", false}, {"grpc", true}} {
			inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: bin, DisableSharedMemory: path.disable})
			if err != nil {
				b.Fatal(err)
			}
			remote, err := inst.Codec()
			if err != nil {
				_ = inst.Close()
				b.Fatal(err)
			}
			for _, n := range codectest.BenchSizes {
				src := codectest.RealMemory(n)
				enc, err := cc.local.Encode(nil, src, cc.level)
				if err != nil {
					b.Fatal(err)
				}
				bound := cc.local.Capabilities().Bound.Max(n)
				ops := []struct {
					name   string
					run    func(c codec.Codec) func(dst []byte) ([]byte, error)
					dstCap int
				}{
					{"Encode", func(c codec.Codec) func([]byte) ([]byte, error) {
						return func(dst []byte) ([]byte, error) { return c.Encode(dst, src, cc.level) }
					}, bound},
					{"Decode", func(c codec.Codec) func([]byte) ([]byte, error) {
						return func(dst []byte) ([]byte, error) { return c.Decode(dst, enc, n) }
					}, n},
				}
				for _, op := range ops {
					name := fmt.Sprintf("%s/%s/%s/%s", cc.name, op.name, sizeLabel(n), path.name)
					b.Run(name, func(b *testing.B) {
						remoteOp, localOp := op.run(remote), op.run(cc.local)
						// Warm both sides (pools, shared-memory slots).
						runOps(b, 2*workers, workers, remoteOp, op.dstCap)
						runOps(b, 2*workers, workers, localOp, op.dstCap)
						b.SetBytes(int64(n))
						b.ReportAllocs()
						b.ResetTimer()
						// Alternate the two in rounds so that load from
						// elsewhere on the machine falls on both alike.
						var pluginTime, baseTime time.Duration
						for r := range rounds {
							share := b.N/rounds + btoi(r < b.N%rounds)
							b.StartTimer()
							pluginTime += runOps(b, share, workers, remoteOp, op.dstCap)
							b.StopTimer()
							baseTime += runOps(b, share, workers, localOp, op.dstCap)
						}
						b.ReportMetric(float64(pluginTime)/float64(baseTime), "plugin/inproc")
						b.ReportMetric(float64(n)*float64(b.N)/baseTime.Seconds()/1e6, "inproc-MB/s")
					})
				}
			}
			if err := inst.Close(); err != nil {
				b.Errorf("close %s plugin: %v", cc.name, err)
			}
		}
	}
}

// rounds is how many times a sub-benchmark alternates between the plugin
// and the in-process codec.
const rounds = 8

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func sizeLabel(n int) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}
