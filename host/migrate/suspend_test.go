package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/msgpipe"
	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/hypervisors/qemu/qemudriver"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// memPipe is a transport session's contract, without the network.
func memPipe() (*msgpipe.End, *msgpipe.End) { return msgpipe.New(64) }

// bareVM is a running `-machine none` QEMU (no guest to boot: a migration
// of it takes milliseconds) with two QMP sockets: drv for the driver and
// the test's own client.
type bareVM struct {
	drv string
	vm  *testguest.VM
}

func startBare(t *testing.T, dir string) bareVM {
	t.Helper()
	q, err := exec.LookPath(testguest.QEMUBinary())
	if err != nil {
		if os.Getenv(testguest.RequireEnv) == "1" {
			t.Fatalf("no QEMU: %v", err)
		}
		t.Skipf("no QEMU: %v", err)
	}
	drv, own := filepath.Join(dir, "drv.sock"), filepath.Join(dir, "own.sock")
	cmd := exec.Command(q, "-machine", "none", "-nodefaults", "-display", "none",
		"-qmp", "unix:"+own+",server=on,wait=off", "-qmp", "unix:"+drv+",server=on,wait=off")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, err := os.Stat(drv); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("QEMU did not create its QMP sockets")
		}
		time.Sleep(10 * time.Millisecond)
	}
	vm, err := testguest.Attach(ctx, own, drv, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	return bareVM{drv: drv, vm: vm}
}

// withoutPaused is the driver as a plugin built before PausedFinisher
// existed sees it: the interface value hides the method.
type withoutPaused struct{ hypervisor.Hypervisor }

func newDriver(t *testing.T, runDir string) *qemudriver.Driver {
	t.Helper()
	d, err := qemudriver.New(qemudriver.Config{RunDir: runDir, QMPDir: runDir, PollInterval: 100 * time.Millisecond,
		Logger: hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: io.Discard})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func status(ctx context.Context, t *testing.T, vm *testguest.VM) string {
	t.Helper()
	st, err := vm.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// suspendFixture starts a running bare source VM and two drivers (source
// and destination) on this host whose VMs live in runDir; dir is for the
// migrations' sockets.
func suspendFixture(t *testing.T) (ctx context.Context, dir, runDir string, src bareVM, srcHV, dstHV *qemudriver.Driver) {
	t.Helper()
	dir = t.TempDir()
	src = startBare(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	if _, err := src.vm.QMP(ctx, "cont", nil); err != nil {
		t.Fatal(err)
	}
	runDir, err := os.MkdirTemp("", "dwcp-sus-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	return ctx, dir, runDir, src, newDriver(t, runDir), newDriver(t, runDir)
}

// TestSuspendLeavesTheDestinationPaused migrates a real QEMU with Suspend
// through Source and Destination (the qemu driver in process, both ends
// on this host): the destination VM ends loaded and paused, the source in
// postmigrate, and both sides say so.
func TestSuspendLeavesTheDestinationPaused(t *testing.T) {
	ctx, dir, _, src, srcHV, dstHV := suspendFixture(t)

	a, b := memPipe()
	defer a.Close()
	type destOut struct {
		res DestResult
		err error
	}
	dch := make(chan destOut, 1)
	go func() {
		res, err := Destination(ctx, b, DestOptions{SocketDir: dir,
			Hypervisor: func(string) (hypervisor.Hypervisor, error) { return dstHV, nil }})
		dch <- destOut{res, err}
	}()
	res, err := Source(ctx, a, srcHV, SourceOptions{VM: hypervisor.VMRef{Address: src.drv}, SocketDir: dir, Suspend: true})
	d := <-dch
	if err != nil || d.err != nil {
		t.Fatalf("suspended migration: source %v; destination %v", err, d.err)
	}
	if !res.DestinationPaused || !d.res.Paused || res.Destination == "" || res.Destination != d.res.VM {
		t.Fatalf("source result %+v, destination result %+v: want paused on both sides", res, d.res)
	}
	// The driver's destination keeps qmp.sock; the test's own monitor of
	// the source was rewritten to qmp1.sock in the same run directory.
	dst, err := testguest.Attach(ctx, filepath.Join(filepath.Dir(res.Destination), "qmp1.sock"), res.Destination, "")
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if st := status(ctx, t, dst); st != "paused" {
		t.Fatalf("destination VM is %q after a suspended migration, want paused", st)
	}
	if st := status(ctx, t, src.vm); st != "postmigrate" {
		t.Fatalf("source VM is %q after a suspended migration, want postmigrate", st)
	}
	if _, err := dst.QMP(ctx, "cont", nil); err != nil {
		t.Fatal(err)
	}
	if st := status(ctx, t, dst); st != "running" {
		t.Fatalf("destination VM is %q after cont", st)
	}
}

// TestSuspendRefusedByDestinationsThatCannot: a destination host that does
// not confirm suspend (an older dwcp: the pipeline without the field) and
// one whose hypervisor plugin cannot leave a VM paused both end the
// migration before the source QEMU migrates. The source VM keeps running
// and no destination VM is left behind.
func TestSuspendRefusedByDestinationsThatCannot(t *testing.T) {
	ctx, dir, runDir, src, srcHV, dstHV := suspendFixture(t)

	cases := []struct {
		name string
		// dest serves the destination end of one session.
		dest func(ctx context.Context, c Conn) error
		want string
	}{
		{"older destination host", func(ctx context.Context, c Conn) error {
			// What a dwcp before suspend does with the hello: accept it
			// without a word about the field it does not know.
			_, _, err := pipeline.Receive(ctx, c, pipeline.DestConfig{
				Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) { return io.Discard, nil, nil }}, nil)
			return err
		}, "did not confirm that it will leave the VM paused"},
		{"plugin without PausedFinisher", func(ctx context.Context, c Conn) error {
			_, err := Destination(ctx, c, DestOptions{SocketDir: dir,
				Hypervisor: func(string) (hypervisor.Hypervisor, error) { return withoutPaused{dstHV}, nil }})
			return err
		}, "hypervisor plugin on this host cannot"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := memPipe()
			defer a.Close()
			dch := make(chan error, 1)
			go func() { dch <- tc.dest(ctx, b) }()
			_, err := Source(ctx, a, srcHV, SourceOptions{VM: hypervisor.VMRef{Address: src.drv}, SocketDir: dir, Suspend: true})
			a.Close()
			derr := <-dch
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("source: %v; want an error saying %q (destination: %v)", err, tc.want, derr)
			}
			if derr == nil {
				t.Errorf("the destination side ended without an error")
			}
			if tc.name == "older destination host" && !errors.Is(err, ErrSuspendUnsupported) {
				t.Errorf("source error does not wrap ErrSuspendUnsupported: %v", err)
			}
			t.Logf("source: %v", err)
			if st := status(ctx, t, src.vm); st != "running" {
				t.Fatalf("source VM is %q after the refusal, want running", st)
			}
			raw, err := src.vm.QMP(ctx, "query-migrate", nil)
			if err != nil {
				t.Fatal(err)
			}
			var mi struct {
				Status string `json:"status"`
			}
			if err := json.Unmarshal(raw, &mi); err != nil {
				t.Fatal(err)
			}
			if mi.Status != "" && mi.Status != "none" {
				t.Errorf("the source QEMU migrated (%s) although the destination refused first", mi.Status)
			}
			left, _ := filepath.Glob(filepath.Join(runDir, "*"))
			if len(left) > 0 {
				t.Errorf("destination VMs left behind: %v", left)
			}
		})
	}
}
