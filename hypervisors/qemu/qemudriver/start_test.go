package qemudriver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/hashicorp/go-hclog"
)

// bareConfig is the VMConfig of a bare (-machine none) QEMU.
func bareConfig(t *testing.T, extra ...string) hypervisor.VMConfig {
	t.Helper()
	argv := append([]string{qemuBin(), "-machine", "none", "-nodefaults", "-display", "none",
		"-serial", "file:/nonexistent/console.log", "-daemonize", "-pidfile", "/nonexistent/q.pid"}, extra...)
	data, err := encodeConfig(vmConfig{Argv: argv, Machine: "none"})
	if err != nil {
		t.Fatal(err)
	}
	return hypervisor.VMConfig{Hypervisor: "qemu", Data: data}
}

func runDirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestStartDestination(t *testing.T) {
	requireQEMU(t)
	runDir := shortDir(t)
	d := newTestDriver(t, Config{RunDir: runDir})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	in := filepath.Join(shortDir(t), "in.sock")

	t.Run("QEMU refuses the command line", func(t *testing.T) {
		_, _, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{
			Config: bareConfig(t, "-no-such-option"), IncomingEndpoint: in})
		if err == nil || !strings.Contains(err.Error(), "no-such-option") {
			t.Fatalf("got %v; want QEMU's own complaint", err)
		}
		if left := runDirEntries(t, runDir); len(left) != 0 {
			t.Errorf("a failed start left %v in the run directory", left)
		}
	})

	t.Run("denied option", func(t *testing.T) {
		_, _, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{
			Config: bareConfig(t, "-plugin", "file=/tmp/evil.so"), IncomingEndpoint: in})
		if !errors.Is(err, sdk.ErrUnsupported) {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("start and cancel", func(t *testing.T) {
		id, ref, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{Config: bareConfig(t), IncomingEndpoint: in})
		if err != nil {
			t.Fatal(err)
		}
		vmDir := filepath.Dir(ref.Address)
		if filepath.Dir(vmDir) != runDir {
			t.Fatalf("VM directory %s is not in %s", vmDir, runDir)
		}
		pid, err := readPidfile(filepath.Join(vmDir, "qemu.pid"))
		if err != nil {
			t.Fatal(err)
		}
		argv, err := readCmdline(pid)
		if err != nil {
			t.Fatal(err)
		}
		joined := strings.Join(argv, " ")
		for _, want := range []string{"-incoming defer", "-serial file:" + vmDir + "/serial.log", "-pidfile " + vmDir + "/qemu.pid"} {
			if !strings.Contains(joined, want) {
				t.Errorf("started QEMU runs %q; missing %q", joined, want)
			}
		}
		if strings.Contains(joined, "/nonexistent") {
			t.Errorf("source paths kept: %q", joined)
		}
		info, err := d.InspectVM(ctx, ref)
		if err != nil || info.State != "inmigrate" {
			t.Fatalf("started VM: %+v, %v", info, err)
		}
		if _, err := d.FinishMigration(ctx, id, true); !errors.Is(err, sdk.ErrFailedPrecondition) {
			t.Errorf("resume before any stream: %v", err)
		}
		if err := d.CancelMigration(ctx, id); err != nil {
			t.Fatal(err)
		}
		if !processGone(pid) {
			t.Errorf("QEMU %d still runs after cancel", pid)
		}
		if left := runDirEntries(t, runDir); len(left) != 0 {
			t.Errorf("cancel left %v in the run directory", left)
		}
		if err := d.CancelMigration(ctx, id); !errors.Is(err, sdk.ErrFailedPrecondition) {
			t.Errorf("second cancel: %v", err)
		}
		if st, err := d.FinishMigration(ctx, id, false); err != nil || st.State != "cancelled" {
			t.Errorf("finish after cancel: %+v, %v", st, err)
		}
	})
}

// TestStartedVMOutlivesPlugin checks that a destination VM is not tied to
// the plugin process: the host may restart a plugin mid-session, and a
// migrated VM must never die with it.
func TestStartedVMOutlivesPlugin(t *testing.T) {
	requireQEMU(t)
	path := buildPlugin(t)
	runDir := shortDir(t)
	t.Setenv(EnvRunDir, runDir)
	t.Setenv(EnvQMPDir, runDir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	h, err := inst.Hypervisor()
	if err != nil {
		inst.Close()
		t.Fatal(err)
	}
	_, ref, err := h.PrepareDestination(ctx, hypervisor.DestinationRequest{
		Config: bareConfig(t), IncomingEndpoint: filepath.Join(shortDir(t), "in.sock")})
	if err != nil {
		inst.Close()
		t.Fatal(err)
	}
	vmDir := filepath.Dir(ref.Address)
	t.Cleanup(func() { (&Driver{log: hclog.NewNullLogger()}).destroyVM(&startedVM{dir: vmDir}) })
	pid, err := readPidfile(filepath.Join(vmDir, "qemu.pid"))
	if err != nil {
		t.Fatal(err)
	}
	inst.Close()
	time.Sleep(200 * time.Millisecond)
	if processGone(pid) {
		t.Fatal("the started VM died with the plugin")
	}
	// A new plugin finds it through the run directory.
	inst2, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer inst2.Close()
	h2, err := inst2.Hypervisor()
	if err != nil {
		t.Fatal(err)
	}
	vms, err := h2.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Ref != ref || vms[0].State != "inmigrate" {
		t.Fatalf("ListVMs after a plugin restart: %+v, %v", vms, err)
	}
}
