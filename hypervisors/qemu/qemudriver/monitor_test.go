package qemudriver

import (
	"context"
	"errors"
	"net"
	"os"
	osexec "os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/hashicorp/go-hclog"
)

func newTestDriver(t testing.TB, cfg Config) *Driver {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Name: "qemu", Level: hclog.Warn, Output: testWriter{t}})
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestCapabilities(t *testing.T) {
	requireQEMU(t)
	d := newTestDriver(t, Config{QEMU: qemuBin()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	caps, err := d.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("probe took %s: QEMU %s, %d machine types, capabilities %v", time.Since(start), caps.Version, len(caps.MachineTypes), caps.MigrationCapabilities)
	if caps.Hypervisor != "qemu" || !caps.CanStartDestination {
		t.Errorf("caps %+v", caps)
	}
	outb, err := osexec.Command(qemuBin(), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	out := string(outb)
	if !strings.Contains(out, "version "+caps.Version) {
		t.Errorf("QMP says version %s; %s --version says %q", caps.Version, qemuBin(), out)
	}
	for _, c := range []string{"return-path", "events", "xbzrle", "multifd"} {
		if !slices.Contains(caps.MigrationCapabilities, c) {
			t.Errorf("capability %s missing from %v", c, caps.MigrationCapabilities)
		}
	}
	for _, p := range []string{"max-bandwidth", "downtime-limit", "multifd-channels"} {
		if !slices.Contains(caps.MigrationParameters, p) {
			t.Errorf("parameter %s missing from %v", p, caps.MigrationParameters)
		}
	}
	for _, m := range []string{"q35", "pc", "none"} {
		if !slices.Contains(caps.MachineTypes, m) {
			t.Errorf("machine type %s missing", m)
		}
	}
	// Cached: the second call starts no QEMU and answers at once.
	start = time.Now()
	again, err := d.Capabilities(ctx)
	if err != nil || again.Version != caps.Version || time.Since(start) > time.Second {
		t.Errorf("second Capabilities: %v after %s", err, time.Since(start))
	}
}

func TestCapabilitiesWithoutQEMU(t *testing.T) {
	d := newTestDriver(t, Config{QEMU: "/nonexistent/qemu-system-x86_64"})
	_, err := d.Capabilities(context.Background())
	if !errors.Is(err, sdk.ErrUnavailable) {
		t.Fatalf("Capabilities without QEMU: %v; want sdk.ErrUnavailable", err)
	}
}

func TestMonitor(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	q := startBare(t, dir)
	d := newTestDriver(t, Config{QEMU: qemuBin(), QMPDir: dir})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	mon, err := d.dial(ctx, q.qmp)
	if err != nil {
		t.Fatal(err)
	}
	if mon.pid != q.pid() {
		t.Errorf("peer pid %d, QEMU is %d", mon.pid, q.pid())
	}

	t.Run("error class kept", func(t *testing.T) {
		err := mon.run(ctx, "no-such-command", nil, nil)
		var qe *QMPError
		if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || !strings.Contains(qe.Desc, "no-such-command") {
			t.Fatalf("got %v", err)
		}
		if !errors.Is(err, sdk.ErrUnsupported) {
			t.Errorf("%v is not sdk.ErrUnsupported", err)
		}
		err = mon.run(ctx, "migrate-set-parameters", map[string]any{"downtime-limit": 9999999999}, nil)
		if !errors.As(err, &qe) || qe.Class != "GenericError" || !strings.Contains(err.Error(), "downtime_limit") {
			t.Fatalf("got %v", err)
		}
		var st runStatus
		if err := mon.run(ctx, "query-status", nil, &st); err != nil || st.Status != "prelaunch" {
			t.Fatalf("monitor after errors: %+v, %v", st, err)
		}
	})

	t.Run("busy monitor", func(t *testing.T) {
		// QEMU serves one QMP client at a time: a second connection gets
		// no greeting. The dial must end with ctx, not hang.
		cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer ccancel()
		start := time.Now()
		_, err := d.dial(cctx, q.qmp)
		if !errors.Is(err, sdk.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("second dial: %v; want sdk.ErrUnavailable after the deadline", err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("second dial took %s", el)
		}
	})

	t.Run("inspect through the held monitor", func(t *testing.T) {
		// InspectVM must not open a second connection (it would wait
		// forever) while a migration holds the first.
		m := &migration{id: "held", role: roleSource, vm: q.qmp, mon: mon}
		if err := d.reserve(m); err != nil {
			t.Fatal(err)
		}
		defer d.unclaim(m)
		info, err := d.InspectVM(ctx, hypervisor.VMRef{Address: q.qmp})
		if err != nil {
			t.Fatal(err)
		}
		if info.State != "prelaunch" || info.MachineType != "none" || info.Config.Hypervisor != "qemu" {
			t.Errorf("info %+v", info)
		}
		cfg, err := decodeConfig(info.Config.Data)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cfg.Argv[1:], q.cmd.Args[1:]) || cfg.QMPPath != q.qmp {
			t.Errorf("config argv %q, want %q", cfg.Argv, q.cmd.Args)
		}
	})

	t.Run("slow and hung QEMU", func(t *testing.T) {
		stop := func(sig syscall.Signal) {
			t.Helper()
			if err := syscall.Kill(q.pid(), sig); err != nil {
				t.Fatal(err)
			}
		}
		short := func() error {
			cctx, ccancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer ccancel()
			return mon.run(cctx, "query-status", nil, &runStatus{})
		}
		// A stopped QEMU answers nothing: the call ends at its deadline.
		stop(syscall.SIGSTOP)
		err := short()
		stop(syscall.SIGCONT)
		if !errors.Is(err, sdk.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("run on a stopped QEMU: %v", err)
		}
		// QEMU was only slow: its late reply goes to the abandoned call,
		// and the next call gets its own.
		var st runStatus
		if err := mon.run(ctx, "query-status", nil, &st); err != nil || st.Status != "prelaunch" {
			t.Fatalf("run after a slow answer: %+v, %v", st, err)
		}
		// Hung for two deadlines: the second caller cuts the connection.
		stop(syscall.SIGSTOP)
		err1, err2 := short(), short()
		stop(syscall.SIGCONT)
		if !errors.Is(err1, sdk.ErrUnavailable) || !errors.Is(err2, sdk.ErrUnavailable) {
			t.Fatalf("runs on a hung QEMU: %v; %v", err1, err2)
		}
		if mon.alive() {
			t.Fatal("monitor still alive after two abandoned calls")
		}
		if err := mon.run(ctx, "query-status", nil, nil); !errors.Is(err, sdk.ErrUnavailable) {
			t.Fatalf("run on a cut monitor: %v", err)
		}
		mon.Close()
		// The socket is free again for a new connection.
		mon2, err := d.dial(ctx, q.qmp)
		if err != nil {
			t.Fatal(err)
		}
		mon2.Close()
	})

	t.Run("not prepared for migration", func(t *testing.T) {
		_, _, err := d.PrepareSource(ctx, hypervisor.VMRef{Address: q.qmp}, hypervisor.Params{})
		if !errors.Is(err, sdk.ErrFailedPrecondition) || !strings.Contains(err.Error(), "prelaunch") {
			t.Errorf("PrepareSource on a prelaunch VM: %v", err)
		}
		_, _, err = d.PrepareDestination(ctx, hypervisor.DestinationRequest{VM: hypervisor.VMRef{Address: q.qmp}, IncomingEndpoint: filepath.Join(dir, "in.sock")})
		if !errors.Is(err, sdk.ErrFailedPrecondition) || !strings.Contains(err.Error(), "-incoming defer") {
			t.Errorf("PrepareDestination on a VM without -incoming: %v", err)
		}
	})

	t.Run("list skips dead sockets", func(t *testing.T) {
		dead := filepath.Join(dir, "dead.sock")
		ln, err := net.Listen("unix", dead)
		if err != nil {
			t.Fatal(err)
		}
		// Closing a Go listener removes its file; keep the file and
		// lose the listener, as a crashed QEMU does.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		_ = ln.Close()
		if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		vms, err := d.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(vms) != 1 || vms[0].Ref.Address != q.qmp || vms[0].State != "prelaunch" {
			t.Fatalf("ListVMs = %+v", vms)
		}
		_, err = d.InspectVM(ctx, hypervisor.VMRef{Address: dead})
		if !errors.Is(err, sdk.ErrUnavailable) || !errors.Is(err, errQEMUGone) {
			t.Errorf("inspect dead socket: %v", err)
		}
		_, err = d.InspectVM(ctx, hypervisor.VMRef{Address: filepath.Join(dir, "notes.txt")})
		if !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("inspect a plain file: %v", err)
		}
	})

	t.Run("list of a missing directory", func(t *testing.T) {
		d2 := newTestDriver(t, Config{QMPDir: filepath.Join(dir, "nope")})
		vms, err := d2.ListVMs(ctx)
		if err != nil || len(vms) != 0 {
			t.Errorf("ListVMs = %v, %v", vms, err)
		}
	})
}

func TestUnknownMigration(t *testing.T) {
	d := newTestDriver(t, Config{})
	ctx := context.Background()
	for name, err := range map[string]error{
		"start":  d.StartMigration(ctx, "x", "/e"),
		"limits": d.SetLimits(ctx, "x", hypervisor.Params{}),
		"cancel": d.CancelMigration(ctx, "x"),
	} {
		if !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := d.WatchMigration(ctx, "x"); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("watch: %v", err)
	}
	if _, _, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Errorf("destination without endpoint: %v", err)
	}
	_, _, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{IncomingEndpoint: "/e",
		Config: hypervisor.VMConfig{Hypervisor: "qemu", Data: []byte(`{"version":1,"argv":["/bin/sh","-c","true"]}`)}})
	if !errors.Is(err, sdk.ErrInvalidArgument) || !strings.Contains(err.Error(), "not a QEMU") {
		t.Errorf("config that runs a shell: %v", err)
	}
}
