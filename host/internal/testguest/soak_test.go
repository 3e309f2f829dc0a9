package testguest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestQEMUOnlySoak migrates freshly booted guests with QEMU alone, no DWCP in the
// path, and watches each destination for a kernel fault. It answers whether the
// guest faults seen after some migrations in the lab (docs/migration.md, "Data
// integrity") happen without DWCP too. It runs only when DWCP_SOAK names the
// number of migrations; DWCP_SOAK_RATE sets QEMU's max-bandwidth in MB/s (0 =
// unlimited), DWCP_SOAK_WOBBLE=1 changes it every second between a third of
// and the full rate while the migration runs, as DWCP's pacing does, and
// DWCP_SOAK_RELAY=MB/s puts a relay between the two QEMUs that forwards the
// stream at that rate (the return path unthrottled), as a link-bound relay
// does (0: as fast as it comes), DWCP_SOAK_BURST=DURATION makes that relay
// deliver in segments of up to that long, as DWCP's destination delivers
// verified segments. DWCP_SOAK_PAUSED=1 starts the destination with -S and continues it
// after the migration, as DWCP's destination host does;
// DWCP_SOAK_AUTOCONVERGE=1 turns QEMU's auto-converge on, as `dwcp migrate`
// does by default.
func TestQEMUOnlySoak(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DWCP_SOAK"))
	if n <= 0 {
		t.Skip("set DWCP_SOAK=N to run N QEMU-only migrations and watch the guests")
	}
	rate, _ := strconv.ParseInt(os.Getenv("DWCP_SOAK_RATE"), 10, 64)
	wobble := os.Getenv("DWCP_SOAK_WOBBLE") == "1"
	relay, _ := strconv.ParseInt(os.Getenv("DWCP_SOAK_RELAY"), 10, 64)
	mem := 256
	if m, _ := strconv.Atoi(os.Getenv("DWCP_SOAK_MEM")); m > 0 {
		mem = m
	}
	g := Require(t)
	faults := 0
	for i := 0; i < n; i++ {
		fault, err := soakOnce(t, g, mem, rate*1e6, wobble, relay*1e6)
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if fault != "" {
			faults++
			t.Logf("run %d: guest fault after migration:\n%s", i, fault)
		} else {
			t.Logf("run %d: guest fine", i)
		}
	}
	t.Logf("%d of %d destinations faulted (rate %d MB/s, wobble %v, relay %d MB/s)", faults, n, rate, wobble, relay)
	if faults > 0 {
		t.Errorf("%d of %d guests faulted after a QEMU-only migration", faults, n)
	}
}

func soakOnce(t *testing.T, g Guest, mem int, rate int64, wobble bool, relayRate int64) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cfg := Config{Guest: g, MemMiB: mem, DirtyKBps: 1024}
	src, err := Start(ctx, cfg)
	if err != nil {
		return "", err
	}
	defer src.Close()
	if _, err := src.WaitReady(ctx); err != nil {
		return "", err
	}
	sock := filepath.Join(dir, "mig.sock")
	dcfg := cfg
	dcfg.Incoming = "unix:" + sock
	paused := os.Getenv("DWCP_SOAK_PAUSED") == "1"
	if paused {
		// As DWCP's destination: paused after the migration until told
		// to continue.
		dcfg.ExtraArgs = append(dcfg.ExtraArgs, "-S")
	}
	dst, err := Start(ctx, dcfg)
	if err != nil {
		return "", err
	}
	defer dst.Close()
	// QEMU listens on sock before it serves QMP, so Start, which waits
	// for QMP, returns with the socket in place.
	target := sock
	if relayRate > 0 || os.Getenv("DWCP_SOAK_BURST") != "" {
		target = filepath.Join(dir, "relay.sock")
		ln, err := net.Listen("unix", target)
		if err != nil {
			return "", err
		}
		rctx, stopRelay := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { stopRelay(); ln.Close(); <-done }()
		go func() {
			defer close(done)
			throttledRelay(rctx, ln, sock, relayRate)
		}()
	}
	if os.Getenv("DWCP_SOAK_AUTOCONVERGE") == "1" {
		caps := []map[string]any{{"capability": "auto-converge", "state": true}}
		if _, err := src.QMP(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
			return "", err
		}
	}
	p := MigrationParams{MaxBandwidth: rate, DowntimeLimitMs: 300}
	if rate == 0 {
		p.MaxBandwidth = 1 << 40
	}
	if err := src.SetMigrationParams(ctx, p); err != nil {
		return "", err
	}
	if _, err := src.QMP(ctx, "migrate", map[string]string{"uri": "unix:" + target}); err != nil {
		return "", err
	}
	step := 0
	mi, err := src.waitMigration(ctx, 200*time.Millisecond, func(MigrationInfo) error {
		step++
		if !wobble || rate == 0 || step%5 != 0 {
			return nil
		}
		r := rate / 3 * int64(1+(step/5)%3)
		return src.SetMigrationParams(ctx, MigrationParams{MaxBandwidth: r})
	})
	if err != nil {
		return "", err
	}
	t.Logf("migrated in %d ms, downtime %d ms, %d syncs", mi.TotalTimeMs, mi.DowntimeMs, mi.RAM.DirtySyncCount)
	if paused {
		if err := dst.WaitStatus(ctx, "paused"); err != nil {
			return "", err
		}
		if _, err := dst.QMP(ctx, "cont", nil); err != nil {
			return "", err
		}
	}
	watch, stop := context.WithTimeout(ctx, 45*time.Second)
	defer stop()
	if f := dst.WatchKernelFault(watch); f != "" {
		return f, nil
	}
	if ctx.Err() != nil {
		return "", fmt.Errorf("soak: %w", ctx.Err())
	}
	if err := dst.alive(); err != nil {
		return "destination QEMU exited: " + err.Error() + dst.serial.tailText(30), nil
	}
	return "", nil
}

// throttledRelay accepts one connection on ln, dials dst and copies between
// them until both directions end: the stream at rate bytes/s in 64 KiB
// steps, the return path as it comes.
func throttledRelay(ctx context.Context, ln net.Listener, dst string, rate int64) {
	closeLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer closeLn()
	in, err := ln.Accept()
	if err != nil {
		return
	}
	defer in.Close()
	out, err := net.Dial("unix", dst)
	if err != nil {
		return
	}
	defer out.Close()
	// Ending ctx unblocks both copies.
	stop := context.AfterFunc(ctx, func() { in.Close(); out.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(in, out)
	}()
	// With burst > 0 the stream goes out in segments, as DWCP's destination
	// delivers verified segments: a segment closes after burst, or when
	// the source paused for 50 ms, and one writer delivers it while the
	// next one fills.
	burst, _ := time.ParseDuration(os.Getenv("DWCP_SOAK_BURST"))
	segs := make(chan []byte, 1)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for seg := range segs {
			if _, err := out.Write(seg); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	start, sent := time.Now(), int64(0)
	var seg []byte
	var segStart time.Time
	for ctx.Err() == nil {
		if burst > 0 {
			_ = in.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		}
		n, err := in.Read(buf)
		if n > 0 {
			sent += int64(n)
			if rate > 0 {
				if ahead := time.Duration(float64(sent)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			if len(seg) == 0 {
				segStart = time.Now()
			}
			seg = append(seg, buf[:n]...)
		}
		idle := errors.Is(err, os.ErrDeadlineExceeded)
		if len(seg) > 0 && (burst <= 0 || err != nil || time.Since(segStart) >= burst) {
			select {
			case segs <- seg:
			case <-written: // the writer failed
				err = io.ErrClosedPipe
			case <-ctx.Done():
			}
			seg = nil
		}
		if err != nil && !idle {
			break
		}
	}
	close(segs)
	// The writer may still be delivering: wait for it before closing.
	<-written
	_ = out.(*net.UnixConn).CloseWrite()
	wg.Wait()
}
