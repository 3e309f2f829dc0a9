package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/qemustream/streamtest"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// launchCodecPlugins builds the zstd and s2 plugin binaries and starts
// them on the shared-memory data plane: the codecs the pipeline leases
// Buffers from in production.
func launchCodecPlugins(t *testing.T) (map[string]*plugin.Instance, []Codec, map[string]codec.Codec) {
	t.Helper()
	root, err := testguest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	insts := map[string]*plugin.Instance{}
	var src []Codec
	dst := map[string]codec.Codec{}
	for i, name := range []string{"zstd", "s2"} {
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", bin, "./plugins/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name, err, out)
		}
		inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: bin})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { inst.Close() })
		if fp, err := inst.Fingerprint(context.Background()); err != nil || fp.DataPlane != "shm" {
			t.Fatalf("%s: data plane %q, %v; want shm", name, fp.DataPlane, err)
		}
		c, err := inst.Codec()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(codec.Leaser); !ok {
			t.Fatalf("%s: the plugin codec does not offer codec.Leaser", name)
		}
		insts[name] = inst
		src = append(src, Codec{ID: uint8(i + 1), Algorithm: name, Codec: c})
		dst[name] = c
	}
	return insts, src, dst
}

// TestPipelineThroughPlugins carries raw and QEMU streams through the
// pipeline with the plugin binaries as codecs on both sides: batches are
// built in leased slots, encoded and decoded in place. One plugin process
// per codec serves source and destination, so their leases compete for
// the same slots.
func TestPipelineThroughPlugins(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two plugin binaries")
	}
	_, src, dst := launchCodecPlugins(t)
	text := bytes.Repeat([]byte("migration page 0x7f3a dirty ram block\n"), 150000)
	qemu := streamtest.Generate(streamtest.Config{Seed: 3, DirtyPasses: 8, DirtyPages: 120, FinalDirty: 10, Devices: 3}).Bytes()
	for _, in := range []struct {
		name  string
		data  []byte
		pages bool
	}{{"raw", text, false}, {"qemu", qemu, true}} {
		for _, choice := range []Choice{{Codec: 1, Level: 1}, {Codec: 2, Level: 1}} {
			cfg := SourceConfig{Codecs: src, Policy: FixedPolicy(choice), BatchBytes: 256 << 10}
			dcfg := DestConfig{Codecs: dst}
			if in.pages {
				cfg.PageStage, dcfg.PageStage = DefaultPageStage(), PageStageDecoder
			}
			r := transfer(t, bytes.NewReader(in.data), cfg, dcfg, nil)
			if r.srcErr != nil || r.dstErr != nil {
				t.Fatalf("%s codec %d: send %v, receive %v", in.name, choice.Codec, r.srcErr, r.dstErr)
			}
			if !bytes.Equal(r.out.Bytes(), in.data) {
				t.Fatalf("%s codec %d: %d bytes delivered, want %d identical", in.name, choice.Codec, r.out.Len(), len(in.data))
			}
			if r.src.Ratio() < 2 {
				t.Fatalf("%s codec %d: ratio %.2f: the codec did not run", in.name, choice.Codec, r.src.Ratio())
			}
		}
	}
}

// TestPipelinePluginCrash kills the codec plugin while batches are leased
// and in flight: both sides end with an error, one saying the plugin
// crashed, nothing hangs or panics, and no goroutine is left (TestMain).
func TestPipelinePluginCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two plugin binaries")
	}
	insts, src, dst := launchCodecPlugins(t)
	pr, pw := io.Pipe()
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		chunk := bytes.Repeat([]byte("dirty page of a guest being migrated\n"), 2000)
		for sent := 0; ; sent += len(chunk) {
			if sent >= 4<<20 && sent < 4<<20+len(chunk) {
				syscall.Kill(insts["zstd"].Pid(), syscall.SIGKILL)
			}
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	r := transfer(t, pr, SourceConfig{Codecs: src, Policy: FixedPolicy{Codec: 1, Level: 1}, BatchBytes: 256 << 10},
		DestConfig{Codecs: dst}, nil)
	pr.CloseWithError(errors.New("test over"))
	<-killed
	if r.srcErr == nil || r.dstErr == nil {
		t.Fatalf("send %v, receive %v: want both to fail", r.srcErr, r.dstErr)
	}
	if !errors.Is(r.srcErr, sdk.ErrPluginCrashed) && !errors.Is(r.dstErr, sdk.ErrPluginCrashed) {
		t.Fatalf("send %v, receive %v: neither says the plugin crashed", r.srcErr, r.dstErr)
	}
}

// hideLeaser is a plugin codec without its codec.Leaser side, so that the
// pipeline takes the copying path through it.
type hideLeaser struct{ codec.Codec }

// BenchmarkPipelinePlugins carries a real QEMU stream (the test guest's
// single-pass migration, 175 MiB) through Send and Receive with default settings
// (GOMAXPROCS workers, 1 MiB batches), three ways in turn in every round:
// the codecs linked in, the codecs as plugin binaries on the copying path
// (plain Encode/Decode: the host copies each batch into a slot and the
// output out), and the plugin binaries with the pipeline building batches
// in leased slots and reading outputs in place. It reports each plugin
// way against the linked one: "copy/inproc" and "lease/inproc" in wall
// time, and "cpu-copy/inproc" and "cpu-lease/inproc" in CPU time of the
// host and plugin processes together (robust to other load on a shared
// machine, where the extra plugin threads get a larger share of the CPUs
// and can make wall time look better than in-process).
func BenchmarkPipelinePlugins(b *testing.B) {
	data, err := readStream(b, "single.bin")
	if err != nil {
		b.Skip(err)
	}
	insts := launchBenchPlugins(b)
	for _, bc := range []struct {
		name  string
		algo  string
		level int
		pages bool
	}{{"s2-1", "s2", 1, false}, {"zstd-1+pages", "zstd", 1, true}} {
		b.Run(bc.name, func(b *testing.B) {
			remote, err := insts[bc.algo].Codec()
			if err != nil {
				b.Fatal(err)
			}
			local := map[string]codec.Codec{"s2": s2codec.New(), "zstd": zstdcodec.New()}[bc.algo]
			ways := []codec.Codec{local, hideLeaser{remote}, remote}
			pids := []int{os.Getpid(), insts[bc.algo].Pid()}
			var wall, cpu [3]time.Duration
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				for w, c := range ways {
					c0 := cpuTimes(b, pids)
					t0 := time.Now()
					pipelineOnce(b, data, c, bc.algo, bc.level, bc.pages)
					wall[w] += time.Since(t0)
					cpu[w] += cpuTimes(b, pids) - c0
				}
			}
			b.ReportMetric(float64(wall[1])/float64(wall[0]), "copy/inproc")
			b.ReportMetric(float64(wall[2])/float64(wall[0]), "lease/inproc")
			b.ReportMetric(float64(cpu[1])/float64(cpu[0]), "cpu-copy/inproc")
			b.ReportMetric(float64(cpu[2])/float64(cpu[0]), "cpu-lease/inproc")
			b.ReportMetric(float64(len(data))*float64(b.N)/wall[0].Seconds()/1e6, "inproc-MB/s")
		})
	}
}

// launchBenchPlugins builds and starts the zstd and s2 plugins once for a
// benchmark.
func launchBenchPlugins(b *testing.B) map[string]*plugin.Instance {
	root, err := testguest.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	insts := map[string]*plugin.Instance{}
	for _, name := range []string{"zstd", "s2"} {
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", bin, "./plugins/"+name)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build %s: %v\n%s", name, err, out)
		}
		inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: bin})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { inst.Close() })
		insts[name] = inst
	}
	return insts
}

// pipelineOnce carries data through Send and Receive with c on both sides.
func pipelineOnce(b *testing.B, data []byte, c codec.Codec, algo string, level int, pages bool) {
	cfg := SourceConfig{Codecs: []Codec{{ID: 1, Algorithm: algo, Codec: c}}, Policy: FixedPolicy{Codec: 1, Level: level}}
	dcfg := DestConfig{Codecs: map[string]codec.Codec{algo: c}}
	if pages {
		cfg.PageStage, dcfg.PageStage = DefaultPageStage(), PageStageDecoder
	}
	var n int
	dcfg.Accept = func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) {
		return writerFunc(func(p []byte) (int, error) { n += len(p); return len(p), nil }), nil, nil
	}
	a, z := memPipe()
	defer a.Close()
	var wg sync.WaitGroup
	var dstErr error
	wg.Go(func() { _, _, dstErr = Receive(context.Background(), z, dcfg, nil) })
	_, err := Send(context.Background(), bytes.NewReader(data), a, cfg, nil)
	wg.Wait()
	if err != nil || dstErr != nil || n != len(data) {
		b.Fatalf("send %v receive %v delivered %d of %d", err, dstErr, n, len(data))
	}
}

// cpuTimes is the CPU time the processes pids have used so far: the sum of
// their threads' on-CPU nanoseconds (/proc/PID/task/*/schedstat).
func cpuTimes(b *testing.B, pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/task", pid)
		tasks, err := os.ReadDir(dir)
		if err != nil {
			b.Fatalf("cpu time of %d: %v", pid, err)
		}
		for _, t := range tasks {
			raw, err := os.ReadFile(filepath.Join(dir, t.Name(), "schedstat"))
			if err != nil {
				continue // the thread ended meanwhile
			}
			var ns int64
			if _, err := fmt.Sscan(string(raw), &ns); err != nil {
				b.Fatalf("cpu time of %d: schedstat %q: %v", pid, raw, err)
			}
			sum += time.Duration(ns)
		}
	}
	return sum
}
