package qemudriver

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/hashicorp/go-hclog"
)

var (
	pluginOnce sync.Once
	pluginPath string
	pluginErr  error
	pluginDir  string
)

// buildPlugin builds hypervisors/qemu once per test binary.
func buildPlugin(t testing.TB) string {
	t.Helper()
	pluginOnce.Do(func() {
		pluginDir, pluginErr = os.MkdirTemp("", "dwcp-qemu-plugin-")
		if pluginErr != nil {
			return
		}
		pluginPath = filepath.Join(pluginDir, "qemu")
		out, err := osexec.Command("go", "build", "-o", pluginPath, "github.com/dwcp/dwcp/hypervisors/qemu").CombinedOutput()
		if err != nil {
			pluginErr = errors.New("go build hypervisors/qemu: " + err.Error() + "\n" + string(out))
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return pluginPath
}

func TestConformanceBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	path := buildPlugin(t)
	t.Setenv(EnvQMPDir, shortDir(t))
	t.Setenv(EnvRunDir, shortDir(t))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep := conformance.CheckHypervisorBinary(ctx, path, conformance.HypervisorOptions{})
	t.Log(rep.String())
	if !rep.OK() {
		t.Fatal("the QEMU plugin fails the hypervisor conformance checks")
	}
	if _, err := osexec.LookPath(qemuBin()); err == nil {
		for _, r := range rep.Results {
			if r.Status == conformance.StatusSkip {
				t.Errorf("check %s skipped with QEMU installed: %s", r.Name, r.Message)
			}
		}
	}
}

// relay is the test's stand-in for the DWCP host: a unix listener at the
// source's endpoint, forwarding to the destination's endpoint in both
// directions (the return path flows back), or holding the bytes (stall).
type relay struct {
	ln       net.Listener
	dst      string
	stall    bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	forward  atomic.Int64 // counted as bytes pass, not when a copy ends
	backward atomic.Int64
}

// counter counts the bytes written through it.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func newRelay(t testing.TB, at, dst string, stall bool) *relay {
	t.Helper()
	ln, err := net.Listen("unix", at)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{ln: ln, dst: dst, stall: stall}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *relay) track(c net.Conn) {
	r.mu.Lock()
	r.conns = append(r.conns, c)
	r.mu.Unlock()
}

func (r *relay) serve() {
	defer r.wg.Done()
	src, err := r.ln.Accept()
	if err != nil {
		return
	}
	r.track(src)
	if r.stall {
		return // accepted, never read: QEMU blocks once the socket buffer is full
	}
	dst, err := net.Dial("unix", r.dst)
	if err != nil {
		_ = src.Close()
		return
	}
	r.track(dst)
	copyHalf := func(to, from net.Conn, n *atomic.Int64) {
		defer r.wg.Done()
		_, _ = io.Copy(counter{to, n}, from)
		if cw, ok := to.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
	}
	r.wg.Add(2)
	go copyHalf(dst, src, &r.forward)
	go copyHalf(src, dst, &r.backward)
}

func (r *relay) close() {
	_ = r.ln.Close()
	r.mu.Lock()
	for _, c := range r.conns {
		_ = c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
}

func (r *relay) bytes() (fwd, back int64) {
	return r.forward.Load(), r.backward.Load()
}

// TestMigrateThroughPlugin boots the test guest and migrates it through the
// plugin binary to a destination the plugin starts from the guest's own
// command line: once into a relay that stalls and is cancelled, then for
// real.
func TestMigrateThroughPlugin(t *testing.T) {
	g := requireGuest(t)
	path := buildPlugin(t)
	runDir := shortDir(t)
	work := shortDir(t)
	t.Setenv(EnvQMPDir, runDir)
	t.Setenv(EnvRunDir, runDir)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()

	src := startGuest(t, g, shortDir(t), 128)
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: path, Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Info, Output: testWriter{t}})})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	h, err := inst.Hypervisor()
	if err != nil {
		t.Fatal(err)
	}
	// Heartbeats start early in boot; the checksum once the fixed region
	// is loaded.
	if err := waitConsole(ctx, "first checksum", func() bool { _, _, ok := checksum(src.serial); return ok }); err != nil {
		t.Fatal(err)
	}
	info, err := h.InspectVM(ctx, hypervisor.VMRef{Address: src.qmp})
	if err != nil {
		t.Fatal(err)
	}
	if info.State != "running" || info.MachineType != "pc-q35-7.2" || info.MemoryBytes != 128<<20 || info.Name != "dwcp-guest" {
		t.Fatalf("InspectVM: %+v", info)
	}
	params := hypervisor.Params{MaxBandwidth: 2 << 30, DowntimeLimit: 300 * time.Millisecond, AvailSwitchoverBandwidth: 1 << 30}

	t.Run("cancel", func(t *testing.T) {
		dstID, dstRef := prepareDestination(ctx, t, h, info, filepath.Join(work, "c-in.sock"), params)
		dstDir := filepath.Dir(dstRef.Address)
		srcID, _, err := h.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, params)
		if err != nil {
			t.Fatal(err)
		}
		newRelay(t, filepath.Join(work, "c-out.sock"), filepath.Join(work, "c-in.sock"), true)
		if err := h.StartMigration(ctx, srcID, filepath.Join(work, "c-out.sock")); err != nil {
			t.Fatal(err)
		}
		// Wait until QEMU is stuck writing into the stalled relay.
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		events, err := h.WatchMigration(wctx, srcID)
		if err != nil {
			t.Fatal(err)
		}
		sawActive := false
		for e := range events {
			if e.Status != nil && e.Status.State == "active" && e.Status.TransferredBytes > 0 {
				sawActive = true
				break
			}
		}
		wcancel()
		for range events {
		}
		if !sawActive {
			t.Fatal("the migration never became active")
		}
		hb := heartbeat(src.serial)
		cancelStart := time.Now()
		if err := h.CancelMigration(ctx, srcID); err != nil {
			t.Fatal(err)
		}
		t.Logf("source cancel took %s", time.Since(cancelStart).Round(time.Millisecond))
		// QEMU 7.2 ends a cancelled migration as cancelled, or as failed
		// when its return-path thread sees the shut-down socket first.
		st, err := h.QueryMigration(ctx, srcID)
		if err != nil || (st.State != "cancelled" && st.State != "failed") {
			t.Fatalf("after cancel: %+v, %v", st, err)
		}
		t.Logf("after cancel: %s %s", st.State, st.Error)
		if _, err := h.FinishMigration(ctx, srcID, false); err != nil {
			t.Fatal(err)
		}
		after, err := h.InspectVM(ctx, hypervisor.VMRef{Address: src.qmp})
		if err != nil || after.State != "running" {
			t.Fatalf("source after cancel: %+v, %v", after, err)
		}
		if _, err := waitHeartbeat(ctx, src.serial, hb+1); err != nil {
			t.Fatalf("source stopped beating after cancel: %v", err)
		}

		pid, err := readPidfile(filepath.Join(dstDir, "qemu.pid"))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.CancelMigration(ctx, dstID); err != nil {
			t.Fatal(err)
		}
		if !processGone(pid) {
			t.Errorf("destination QEMU %d still runs after cancel", pid)
		}
		if _, err := os.Stat(dstDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("run directory %s left after cancel: %v", dstDir, err)
		}
		if _, err := h.QueryMigration(ctx, dstID); err != nil {
			t.Errorf("query of a cancelled destination: %v", err)
		}
		if _, err := h.FinishMigration(ctx, dstID, false); err != nil {
			t.Error(err)
		}
		if _, err := h.QueryMigration(ctx, dstID); !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("a finished migration is still known: %v", err)
		}
	})

	t.Run("migrate", func(t *testing.T) {
		in, out := filepath.Join(work, "m-in.sock"), filepath.Join(work, "m-out.sock")
		dstID, dstRef := prepareDestination(ctx, t, h, info, in, params)
		dstDir := filepath.Dir(dstRef.Address)
		dstSerial := filepath.Join(dstDir, "serial.log")
		srcID, _, err := h.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, params)
		if err != nil {
			t.Fatal(err)
		}
		sum0, n0, _ := checksum(src.serial)
		r := newRelay(t, out, in, false)
		srcEvents, err := h.WatchMigration(ctx, srcID)
		if err != nil {
			t.Fatal(err)
		}
		dstEvents, err := h.WatchMigration(ctx, dstID)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := h.StartMigration(ctx, srcID, out); err != nil {
			t.Fatal(err)
		}
		var last hypervisor.Status
		var states []string
		passes := 0
		notes := 0
		for e := range srcEvents {
			switch e.Type {
			case hypervisor.EventPass:
				passes++
			case hypervisor.EventLog:
				notes++
				t.Logf("log event: %s", e.Message)
			}
			if e.Status != nil {
				last = *e.Status
				if len(states) == 0 || states[len(states)-1] != last.State {
					states = append(states, last.State)
				}
			}
		}
		wall := time.Since(start)
		if last.State != "completed" || last.TotalTime == 0 || last.TransferredBytes == 0 {
			t.Fatalf("source watch ended in %+v (states %v)", last, states)
		}
		if passes == 0 {
			t.Error("no MIGRATION_PASS event")
		}
		if notes == 0 {
			t.Error("no event says QEMU 7.2 lacks avail-switchover-bandwidth")
		}
		var dstLast hypervisor.Status
		for e := range dstEvents {
			if e.Status != nil {
				dstLast = *e.Status
			}
		}
		if dstLast.State != "completed" {
			t.Fatalf("destination watch ended in %+v", dstLast)
		}
		fwd, back := r.bytes()
		t.Logf("migration: %s wall, QEMU total %s, downtime %s, %d passes, %d bytes relayed (%d back), states %v",
			wall.Round(time.Millisecond), last.TotalTime, last.Downtime, last.DirtySyncCount, fwd, back, states)
		if fwd < int64(last.TransferredBytes) || back == 0 {
			t.Errorf("relay carried %d bytes forward (QEMU transferred %d) and %d back", fwd, last.TransferredBytes, back)
		}
		lastSrcHB := heartbeat(src.serial)

		// Not running before the host says so: the stream was verified.
		dinfo, err := h.InspectVM(ctx, dstRef)
		if err != nil || dinfo.State != "paused" {
			t.Fatalf("destination before finish: %+v, %v", dinfo, err)
		}
		st, err := h.FinishMigration(ctx, dstID, true)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != "completed" {
			t.Errorf("finish destination: %+v", st)
		}
		sst, err := h.FinishMigration(ctx, srcID, false)
		if err != nil || sst.State != "completed" || sst.TransferredBytes == 0 {
			t.Fatalf("finish source: %+v, %v", sst, err)
		}
		sinfo, err := h.InspectVM(ctx, hypervisor.VMRef{Address: src.qmp})
		if err != nil || sinfo.State != "postmigrate" {
			t.Errorf("source after migration: %+v, %v", sinfo, err)
		}
		dinfo, err = h.InspectVM(ctx, dstRef)
		if err != nil || dinfo.State != "running" {
			t.Fatalf("destination after finish: %+v, %v", dinfo, err)
		}
		// The guest goes on where it was: its heartbeat count continues
		// past the source's last one (a restarted guest counts from 0),
		// and the fixed region's checksum is unchanged.
		hb, err := waitHeartbeat(ctx, dstSerial, lastSrcHB)
		if err != nil {
			t.Fatal(err)
		}
		if err := waitConsole(ctx, "checksum on the destination", func() bool { _, n, ok := checksum(dstSerial); return ok && n > n0 }); err != nil {
			t.Fatal(err)
		}
		sum1, n1, _ := checksum(dstSerial)
		if sum1 != sum0 {
			t.Errorf("checksum changed across the migration: %s (n=%d) → %s (n=%d)", sum0, n0, sum1, n1)
		}
		t.Logf("destination heartbeat %d after source's %d; checksum %s n=%d→%d", hb, lastSrcHB, sum1, n0, n1)
		vms, err := h.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, v := range vms {
			found = found || v.Ref == dstRef
		}
		if !found {
			t.Errorf("ListVMs does not show the started VM %s: %+v", dstRef.Address, vms)
		}
	})
}

// prepareDestination starts a destination from the source's config and
// arranges for the VM to be killed at the end of the test (it is a daemon
// that would outlive it).
func prepareDestination(ctx context.Context, t *testing.T, h hypervisor.Hypervisor, src hypervisor.VMInfo, in string, p hypervisor.Params) (string, hypervisor.VMRef) {
	t.Helper()
	start := time.Now()
	id, ref, err := h.PrepareDestination(ctx, hypervisor.DestinationRequest{Config: src.Config, IncomingEndpoint: in, Params: p})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(ref.Address)
	t.Cleanup(func() {
		(&Driver{log: hclog.NewNullLogger()}).destroyVM(&startedVM{dir: dir})
	})
	t.Logf("destination %s started in %s (%s)", id, time.Since(start).Round(time.Millisecond), dir)
	if !strings.HasPrefix(ref.Address, os.Getenv(EnvRunDir)) {
		t.Errorf("destination QMP socket %s is outside the run directory", ref.Address)
	}
	if fi, err := os.Stat(in); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("destination does not listen on %s: %v", in, err)
	}
	return id, ref
}
