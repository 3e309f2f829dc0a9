// Command capture-streams boots the test guest once and captures three real QEMU
// migration streams from it into a cache directory (default /tmp/dwcp-streams):
//
//	single.bin  one-pass stream, bandwidth unlimited, after the workload ran a while
//	later.bin   the same guest some seconds later, captured the same way (for
//	            delta-against-an-earlier-migration work)
//	live.bin    a multi-pass live stream: bandwidth limited and switchover held back
//	            until several dirty-bitmap syncs happened
//	summary.json, summary.md   sizes, passes, zero/normal page mix, timings
//
// When summary.json matches the current guest build and parameters and the files
// are intact, nothing is captured again (-force overrides). Run it through
// testdata/guest/capture-streams.sh.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
)

type params struct {
	MemMiB          int   `json:"mem_mib"`
	WarmupBeats     int   `json:"warmup_beats"`
	GapBeats        int   `json:"gap_beats"`
	LiveBandwidth   int64 `json:"live_max_bandwidth"`
	LiveDowntimeMs  int64 `json:"live_downtime_limit_ms"`
	LiveMinSyncs    int64 `json:"live_min_dirty_syncs"`
	DirtyKBps       int   `json:"dirty_kbps"`
	SinglePassLimit int64 `json:"single_max_bandwidth"`
}

type streamSummary struct {
	Name            string  `json:"name"`
	File            string  `json:"file"`
	Bytes           int64   `json:"bytes"`
	SHA256          string  `json:"sha256"`
	GuestHeartbeat  int     `json:"guest_heartbeat"`
	WallMs          int64   `json:"wall_ms"`
	TotalTimeMs     int64   `json:"total_time_ms"`
	DowntimeMs      int64   `json:"downtime_ms"`
	DirtySyncCount  int64   `json:"dirty_sync_count"`
	ZeroPages       int64   `json:"zero_pages"`
	NormalPages     int64   `json:"normal_pages"`
	ZeroPercent     float64 `json:"zero_percent"`
	Transferred     int64   `json:"transferred"`
	MaxBandwidth    int64   `json:"max_bandwidth"`
	DowntimeLimitMs int64   `json:"downtime_limit_ms"`
	Machine         string  `json:"machine"`
	Devices         int     `json:"device_sections"`
}

type summary struct {
	GuestKey      string            `json:"guest_key"`
	KernelVersion string            `json:"kernel_version"`
	QEMU          string            `json:"qemu"`
	CapturedAt    string            `json:"captured_at"`
	Params        params            `json:"params"`
	BootToReadyMs int64             `json:"boot_to_ready_ms"`
	TotalWallMs   int64             `json:"total_wall_ms"`
	GuestConfig   map[string]string `json:"guest_config"`
	GuestMem      map[string]string `json:"guest_mem"`
	Streams       []streamSummary   `json:"streams"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "capture-streams:", err)
		os.Exit(1)
	}
}

func run() error {
	def := os.Getenv("DWCP_STREAMS")
	if def == "" {
		def = "/tmp/dwcp-streams"
	}
	out := flag.String("out", def, "directory for the streams and summary")
	guestDir := flag.String("guest", "", "guest build directory (default: the shared cache)")
	force := flag.Bool("force", false, "capture even when the cached streams are current")
	var p params
	flag.IntVar(&p.MemMiB, "mem", 256, "guest RAM in MiB")
	flag.IntVar(&p.WarmupBeats, "warmup", 10, "heartbeats (seconds of guest time) between ready and single.bin")
	flag.IntVar(&p.GapBeats, "gap", 10, "heartbeats between single.bin and later.bin")
	flag.Int64Var(&p.LiveBandwidth, "live-bw", 32<<20, "max-bandwidth of the live capture, bytes/s")
	flag.Int64Var(&p.LiveDowntimeMs, "live-downtime", 50, "downtime-limit (ms) that lets the live capture finish")
	flag.Int64Var(&p.LiveMinSyncs, "live-syncs", 5, "dirty-bitmap syncs before the live capture may switch over (>= 3)")
	flag.IntVar(&p.DirtyKBps, "dirty-kbps", 1024, "guest bulk dirty rate, KiB/s")
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if p.LiveMinSyncs < 3 {
		return fmt.Errorf("-live-syncs %d: a multi-pass stream needs at least 3", p.LiveMinSyncs)
	}
	p.SinglePassLimit = 8 << 30

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()

	g, err := testguest.Build(ctx, *guestDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	sumPath := filepath.Join(*out, "summary.json")
	if !*force {
		if s, ok := cached(sumPath, g.Key, p); ok {
			fmt.Fprintf(os.Stderr, "streams in %s are current (guest %.12s); -force to capture again\n", *out, g.Key)
			printTable(os.Stdout, s)
			return nil
		}
	}
	s, err := capture(ctx, g, p, *out)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(sumPath, append(b, '\n'), 0o644); err != nil {
		return err
	}
	md, err := os.Create(filepath.Join(*out, "summary.md"))
	if err != nil {
		return err
	}
	printTable(md, s)
	if err := md.Close(); err != nil {
		return err
	}
	printTable(os.Stdout, s)
	return nil
}

func capture(ctx context.Context, g testguest.Guest, p params, out string) (summary, error) {
	s := summary{
		GuestKey:      g.Key,
		KernelVersion: g.KernelVersion,
		CapturedAt:    time.Now().UTC().Format(time.RFC3339),
		Params:        p,
	}
	t0 := time.Now()
	vm, err := testguest.Start(ctx, testguest.Config{Guest: g, MemMiB: p.MemMiB, DirtyKBps: p.DirtyKBps, Name: "capture"})
	if err != nil {
		return s, err
	}
	defer vm.Close()
	if raw, err := vm.QMP(ctx, "query-version", nil); err == nil {
		var v struct {
			QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
			Package string                            `json:"package"`
		}
		if json.Unmarshal(raw, &v) == nil {
			s.QEMU = strings.TrimSpace(fmt.Sprintf("%d.%d.%d %s", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro, v.Package))
		}
	}
	info, err := vm.WaitReady(ctx)
	if err != nil {
		return s, err
	}
	s.BootToReadyMs = time.Since(t0).Milliseconds()
	s.GuestConfig, s.GuestMem = info.Config, info.Mem
	logf("guest ready after %.1fs: %v", time.Since(t0).Seconds(), info.Config)

	hb, err := vm.Heartbeat()
	if err != nil {
		return s, err
	}
	if hb, err = vm.WaitHeartbeat(ctx, hb.N+p.WarmupBeats); err != nil {
		return s, err
	}
	single, err := one(ctx, vm, out, "single", hb.N, testguest.CaptureOptions{MaxBandwidth: p.SinglePassLimit})
	if err != nil {
		return s, err
	}
	if hb, err = vm.WaitHeartbeat(ctx, hb.N+p.GapBeats); err != nil {
		return s, err
	}
	later, err := one(ctx, vm, out, "later", hb.N, testguest.CaptureOptions{MaxBandwidth: p.SinglePassLimit})
	if err != nil {
		return s, err
	}
	if hb, err = vm.WaitHeartbeat(ctx, hb.N+2); err != nil {
		return s, err
	}
	live, err := one(ctx, vm, out, "live", hb.N, testguest.CaptureOptions{
		MaxBandwidth:    p.LiveBandwidth,
		DowntimeLimitMs: p.LiveDowntimeMs,
		MinPasses:       p.LiveMinSyncs,
	})
	if err != nil {
		return s, err
	}
	if live.DirtySyncCount < 3 {
		return s, fmt.Errorf("live.bin: dirty-sync-count %d, want >= 3", live.DirtySyncCount)
	}
	s.Streams = []streamSummary{single, later, live}
	s.TotalWallMs = time.Since(t0).Milliseconds()
	return s, nil
}

// one captures name.bin through a temporary file, so an interrupted capture never
// leaves a file that looks complete.
func one(ctx context.Context, vm *testguest.VM, out, name string, hb int, opt testguest.CaptureOptions) (streamSummary, error) {
	final := filepath.Join(out, name+".bin")
	tmp := final + ".partial"
	res, err := vm.Capture(ctx, tmp, opt)
	if err != nil {
		_ = os.Remove(tmp)
		return streamSummary{}, fmt.Errorf("%s: %w", name, err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return streamSummary{}, err
	}
	sum, err := fileSHA256(final)
	if err != nil {
		return streamSummary{}, err
	}
	ram := res.Info.RAM
	if ram == nil {
		return streamSummary{}, fmt.Errorf("%s: query-migrate has no ram statistics", name)
	}
	ss := streamSummary{
		Name:            name,
		File:            name + ".bin",
		Bytes:           res.Bytes,
		SHA256:          sum,
		GuestHeartbeat:  hb,
		WallMs:          res.Wall.Milliseconds(),
		TotalTimeMs:     res.Info.TotalTimeMs,
		DowntimeMs:      res.Info.DowntimeMs,
		DirtySyncCount:  ram.DirtySyncCount,
		ZeroPages:       ram.Duplicate,
		NormalPages:     ram.Normal,
		Transferred:     ram.Transferred,
		MaxBandwidth:    opt.MaxBandwidth,
		DowntimeLimitMs: opt.DowntimeLimitMs,
		Machine:         res.Stream.Machine,
		Devices:         len(res.Stream.Devices),
	}
	if ss.DowntimeLimitMs == 0 {
		ss.DowntimeLimitMs = 300
	}
	if n := ram.Duplicate + ram.Normal; n > 0 {
		ss.ZeroPercent = 100 * float64(ram.Duplicate) / float64(n)
	}
	logf("%s.bin: %d bytes, %d syncs, %d zero + %d normal pages, %d ms (downtime %d ms)",
		name, ss.Bytes, ss.DirtySyncCount, ss.ZeroPages, ss.NormalPages, ss.TotalTimeMs, ss.DowntimeMs)
	return ss, nil
}

// cached reports whether path describes streams of this guest and these
// parameters that are still on disk with their recorded size and hash.
func cached(path, key string, p params) (summary, bool) {
	var s summary
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &s) != nil {
		return s, false
	}
	if s.GuestKey != key || s.Params != p || len(s.Streams) != 3 {
		return s, false
	}
	for _, st := range s.Streams {
		f := filepath.Join(filepath.Dir(path), st.File)
		fi, err := os.Stat(f)
		if err != nil || fi.Size() != st.Bytes {
			return s, false
		}
		if sum, err := fileSHA256(f); err != nil || sum != st.SHA256 {
			return s, false
		}
	}
	return s, true
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func printTable(w io.Writer, s summary) {
	fmt.Fprintf(w, "Guest %.12s, kernel %s, QEMU %s, %d MiB, captured %s; boot to ready %.1f s, all captures %.1f s.\n\n",
		s.GuestKey, s.KernelVersion, s.QEMU, s.Params.MemMiB, s.CapturedAt,
		float64(s.BootToReadyMs)/1000, float64(s.TotalWallMs)/1000)
	fmt.Fprintln(w, "| stream | bytes | guest hb | max-bandwidth | dirty syncs | zero pages | normal pages | zero % | total ms | downtime ms |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, st := range s.Streams {
		fmt.Fprintf(w, "| %s | %d | %d | %d MiB/s | %d | %d | %d | %.1f | %d | %d |\n",
			st.File, st.Bytes, st.GuestHeartbeat, st.MaxBandwidth>>20, st.DirtySyncCount,
			st.ZeroPages, st.NormalPages, st.ZeroPercent, st.TotalTimeMs, st.DowntimeMs)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "capture-streams: "+format+"\n", args...)
}
