package plugins_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
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

// runOps performs n operations split across workers goroutines and returns
// the wall time. Each goroutine makes its own operation with newOp, so
// that it owns its buffers (reused across its operations); it is the same
// procedure for the in-process codec and the plugin so the two are
// comparable.
func runOps(b *testing.B, n, workers int, newOp func() func() error) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	ops := make([]func() error, workers)
	for w := range ops {
		ops[w] = newOp()
	}
	start := time.Now()
	for w := range workers {
		share := n / workers
		if w < n%workers {
			share++
		}
		wg.Go(func() {
			for range share {
				if err := ops[w](); err != nil {
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

// appendOp turns an append-style call into an operation that reuses one
// dst of capacity dstCap.
func appendOp(call func(dst []byte) ([]byte, error), dstCap int) func() func() error {
	return func() func() error {
		dst := make([]byte, 0, dstCap)
		return func() (err error) {
			dst, err = call(dst[:0])
			return err
		}
	}
}

// BenchmarkBoundary runs the same codec in-process and behind the plugin
// boundary (the built binary) at the same concurrency (GOMAXPROCS
// callers), and reports plugin time over in-process time for the same
// work as "plugin/inproc" (1.00 = no overhead; targets: ≤ 1.05 at 1 MiB,
// ≤ 1.15 at 64 KiB). ns/op and MB/s are the plugin path's; the in-process
// baseline runs inside each sub-benchmark with the timer stopped,
// alternating with the plugin in rounds, so both see the same machine
// load. The last path element says what is measured:
//
//   - shm, grpc: codec.Codec's Encode(dst, src) and Decode(dst, src) with a
//     reused dst, on the shared-memory data plane (the host copies src into
//     a slot and the output out of it) or on the gRPC fallback. In-process:
//     the same call on the linked codec.
//   - lease: the zero-copy path as the pipeline uses it (codec.Leaser).
//     Encode: the plugin side leases a Buffer, copies the source block into
//     its Input (the pipeline's batch builder writing a batch), encodes in
//     place, copies the output once into a reused frame buffer (the
//     pipeline building the frame) and releases; the in-process side copies
//     the source block into a reused private batch buffer, encodes into a
//     reused dst and copies dst into the frame buffer. Decode: the plugin
//     side leases, copies the compressed block into Input (the frame's
//     payload has to get into shared memory), decodes in place, copies
//     the output once into a reused buffer (the destination's reassembly
//     buffer) and releases; the in-process side decodes straight from the
//     compressed block into a reused dst and copies dst once likewise.
//     Both sides do the same copies except the plugin's copy into the
//     slot, which the pipeline cannot avoid either.
//   - batch4, batch16 (4 KiB and 64 KiB blocks only): codec.Batcher, 4
//     or 16 blocks per round trip. Each caller leases a Batch, appends
//     the source block to its Input 4 or 16 times (queuing an encode of
//     each), runs it (one request, one doorbell, one completion for all of
//     them), copies each output once into a reused frame buffer and
//     releases the Batch. Decode likewise, with the compressed block
//     appended and each output copied once. The in-process side does
//     exactly the lease rows' in-process work 4 or 16 times per call
//     (on one reused batch buffer, so its working set stays one block
//     where the plugin's is the whole batch: that is the in-process
//     codec's real advantage, not a benchmark artefact). A call is
//     depth blocks, so a sub-benchmark makes ceil(N/depth) calls per
//     side; ns/op and MB/s count N blocks, the ratios compare the same
//     calls.
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
	type op struct {
		name        string
		remote, loc func() func() error
		per         int // blocks per call (0: 1)
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
			self, pid := os.Getpid(), inst.Pid()
			batcher, ok := remote.(codec.Batcher)
			if !ok {
				_ = inst.Close()
				b.Fatal("the plugin's codec does not offer codec.Batcher")
			}
			for _, n := range codectest.BenchSizes {
				src := codectest.RealMemory(n)
				enc, err := cc.local.Encode(nil, src, cc.level)
				if err != nil {
					b.Fatal(err)
				}
				bound := cc.local.Capabilities().Bound.Max(n)
				ops := []op{
					{path.name + "/Encode",
						appendOp(func(dst []byte) ([]byte, error) { return remote.Encode(dst, src, cc.level) }, bound),
						appendOp(func(dst []byte) ([]byte, error) { return cc.local.Encode(dst, src, cc.level) }, bound), 1},
					{path.name + "/Decode",
						appendOp(func(dst []byte) ([]byte, error) { return remote.Decode(dst, enc, n) }, n),
						appendOp(func(dst []byte) ([]byte, error) { return cc.local.Decode(dst, enc, n) }, n), 1},
				}
				if !path.disable {
					ops = append(ops,
						op{"lease/Encode", leaseEncode(batcher, src, cc.level, bound), localEncode(cc.local, src, cc.level, bound), 1},
						op{"lease/Decode", leaseDecode(batcher, enc, n), localDecode(cc.local, enc, n), 1},
					)
					for _, depth := range batchDepths {
						if n > 64<<10 {
							break
						}
						ops = append(ops,
							op{fmt.Sprintf("batch%d/Encode", depth), batchEncode(batcher, src, cc.level, bound, depth), repeated(localEncode(cc.local, src, cc.level, bound), depth), depth},
							op{fmt.Sprintf("batch%d/Decode", depth), batchDecode(batcher, enc, n, depth), repeated(localDecode(cc.local, enc, n), depth), depth},
						)
					}
				}
				for _, op := range ops {
					pathName, opName, _ := strings.Cut(op.name, "/")
					name := fmt.Sprintf("%s/%s/%s/%s", cc.name, opName, sizeLabel(n), pathName)
					b.Run(name, func(b *testing.B) {
						// Warm both sides (pools, shared-memory slots).
						runOps(b, 2*workers, workers, op.remote)
						runOps(b, 2*workers, workers, op.loc)
						b.SetBytes(int64(n))
						b.ReportAllocs()
						b.ResetTimer()
						// Alternate the two in rounds so that load from
						// elsewhere on the machine falls on both alike.
						var pluginTime, baseTime, pluginCPU, baseCPU time.Duration
						per := max(op.per, 1)
						for r := range rounds {
							share := b.N/rounds + btoi(r < b.N%rounds)
							share = (share + per - 1) / per // calls of per blocks
							h0, p0 := cpuTime(b, self), cpuTime(b, pid)
							b.StartTimer()
							pluginTime += runOps(b, share, workers, op.remote)
							b.StopTimer()
							h1, p1 := cpuTime(b, self), cpuTime(b, pid)
							baseTime += runOps(b, share, workers, op.loc)
							pluginCPU += h1 - h0 + p1 - p0
							baseCPU += cpuTime(b, self) - h1
						}
						b.ReportMetric(float64(pluginTime)/float64(baseTime), "plugin/inproc")
						b.ReportMetric(float64(pluginCPU)/float64(baseCPU), "cpu-plugin/inproc")
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

// leaseEncode is the plugin side of the lease/Encode rows (see
// BenchmarkBoundary): fill a leased Buffer, encode in place, copy the
// output into the frame, release.
func leaseEncode(l codec.Leaser, src []byte, level, bound int) func() func() error {
	return func() func() error {
		frame := make([]byte, 0, bound)
		return func() error {
			buf := l.Lease(len(src))
			defer buf.Release()
			out, err := buf.Encode(append(buf.Input(), src...), level)
			frame = append(frame[:0], out...)
			return err
		}
	}
}

// localEncode is the in-process side of the lease/Encode rows: the same
// copies through private buffers.
func localEncode(c codec.Codec, src []byte, level, bound int) func() func() error {
	return func() func() error {
		batch := make([]byte, 0, len(src))
		dst := make([]byte, 0, bound)
		frame := make([]byte, 0, bound)
		return func() (err error) {
			batch = append(batch[:0], src...)
			dst, err = c.Encode(dst[:0], batch, level)
			frame = append(frame[:0], dst...)
			return err
		}
	}
}

// leaseDecode is the plugin side of the lease/Decode rows: copy the
// compressed block into a leased Buffer, decode in place, copy the output
// once, release.
func leaseDecode(l codec.Leaser, enc []byte, n int) func() func() error {
	return func() func() error {
		hold := make([]byte, 0, n)
		return func() error {
			buf := l.Lease(len(enc))
			defer buf.Release()
			out, err := buf.Decode(append(buf.Input(), enc...), n)
			hold = append(hold[:0], out...)
			return err
		}
	}
}

// localDecode is the in-process side of the lease/Decode rows: decode
// from the compressed block into a reused dst, copy it once.
func localDecode(c codec.Codec, enc []byte, n int) func() func() error {
	return func() func() error {
		dst := make([]byte, 0, n)
		hold := make([]byte, 0, n)
		return func() (err error) {
			dst, err = c.Decode(dst[:0], enc, n)
			hold = append(hold[:0], dst...)
			return err
		}
	}
}

// batchDepths are the blocks per round trip of the batch rows.
var batchDepths = []int{4, 16}

// batchEncode is the plugin side of the batch16/Encode rows (see
// BenchmarkBoundary): depth copies of src built in one leased Batch,
// encoded in one round trip, each output copied once into the frame.
func batchEncode(bt codec.Batcher, src []byte, level, bound, depth int) func() func() error {
	return func() func() error {
		frame := make([]byte, 0, bound)
		return func() error {
			b := bt.LeaseBatch(depth * len(src))
			defer b.Release()
			for range depth {
				if err := b.AddEncode(append(b.Input(), src...), level); err != nil {
					return err
				}
			}
			return drainBatch(b, &frame)
		}
	}
}

// batchDecode is the plugin side of the batch16/Decode rows: depth copies
// of the compressed block in one Batch, decoded in one round trip, each
// output copied once.
func batchDecode(bt codec.Batcher, enc []byte, n, depth int) func() func() error {
	return func() func() error {
		hold := make([]byte, 0, n)
		return func() error {
			b := bt.LeaseBatch(depth * len(enc))
			defer b.Release()
			for range depth {
				if err := b.AddDecode(append(b.Input(), enc...), n); err != nil {
					return err
				}
			}
			return drainBatch(b, &hold)
		}
	}
}

// drainBatch runs b and copies each block's output into *into.
func drainBatch(b codec.Batch, into *[]byte) error {
	if err := b.Run(); err != nil {
		return err
	}
	for i := range b.Len() {
		out, err := b.Result(i)
		if err != nil {
			return err
		}
		*into = append((*into)[:0], out...)
	}
	return nil
}

// repeated makes an operation that runs each of newOp's operations depth
// times: the in-process side of the batch rows.
func repeated(newOp func() func() error, depth int) func() func() error {
	return func() func() error {
		one := newOp()
		return func() error {
			for range depth {
				if err := one(); err != nil {
					return err
				}
			}
			return nil
		}
	}
}

// cpuTime is the CPU time process pid has used so far: the sum of its
// threads' on-CPU nanoseconds from /proc/PID/task/*/schedstat (exact, where
// rusage and /proc/PID/stat count in clock ticks). A thread that exits
// takes its time with it; Go runtimes rarely end threads.
func cpuTime(b *testing.B, pid int) time.Duration {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		b.Fatalf("cpu time of %d: %v", pid, err)
	}
	var sum time.Duration
	for _, t := range tasks {
		raw, err := os.ReadFile(dir + "/" + t.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(raw))
		if len(f) == 0 {
			b.Fatalf("cpu time of %d: schedstat %q", pid, raw)
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			b.Fatalf("cpu time of %d: schedstat %q: %v", pid, raw, err)
		}
		sum += time.Duration(ns)
	}
	return sum
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
