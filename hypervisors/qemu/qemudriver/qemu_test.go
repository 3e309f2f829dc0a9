package qemudriver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// This file is the test harness for real QEMU processes: a bare `-machine
// none` QEMU for monitor tests, and the project's test guest (built by
// testdata/guest/build-guest.sh) for migrations. host/internal/testguest
// does the same for host/ packages, but Go's internal rule keeps it out of
// reach from hypervisors/: this is the smallest subset the driver tests
// need, with the same knobs, cache and skip rules.

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if pluginDir != "" {
			_ = os.RemoveAll(pluginDir)
		}
		os.Exit(code)
	}))
}

// requireEnv turns a missing QEMU into a failure instead of a skip (CI).
const requireEnv = "DWCP_REQUIRE_QEMU_TESTS"

func qemuBin() string {
	if q := os.Getenv(EnvQEMU); q != "" {
		return q
	}
	return "qemu-system-x86_64"
}

// requireQEMU skips (or fails under DWCP_REQUIRE_QEMU_TESTS=1) without QEMU.
func requireQEMU(t testing.TB) {
	t.Helper()
	required := os.Getenv(requireEnv) == "1"
	if testing.Short() && !required {
		t.Skip("runs QEMU; skipped in -short mode")
	}
	if _, err := exec.LookPath(qemuBin()); err != nil {
		if required {
			t.Fatalf("%s not found (%s=1): apt-get install -y qemu-system-x86", qemuBin(), requireEnv)
		}
		t.Skipf("%s not found: apt-get install -y qemu-system-x86 (set %s=1 to fail instead)", qemuBin(), requireEnv)
	}
}

// shortDir is a temporary directory with a short path: unix socket paths
// are limited to 108 bytes, and t.TempDir's can be long.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// proc is a QEMU the test started; it dies with the test process
// (Pdeathsig) and is killed at cleanup.
type proc struct {
	cmd    *exec.Cmd
	qmp    string
	serial string
	exited chan struct{}
	out    bytes.Buffer
	mu     sync.Mutex
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) gone() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// startQEMU runs QEMU with a QMP socket in dir plus args, and waits for the
// socket to appear.
func startQEMU(t testing.TB, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{qmp: filepath.Join(dir, "qmp.sock"), serial: filepath.Join(dir, "serial.log"), exited: make(chan struct{})}
	all := append([]string{"-qmp", "unix:" + p.qmp + ",server=on,wait=off"}, args...)
	p.cmd = exec.Command(qemuBin(), all...)
	p.cmd.Stdout, p.cmd.Stderr = &lockedWriter{p: p}, &lockedWriter{p: p}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.gone() {
			// Nothing in these tests ends a QEMU they started: say why
			// it left.
			p.mu.Lock()
			t.Errorf("QEMU %v exited during the test: %v\n%s", p.cmd.Args[:4], p.cmd.ProcessState, p.out.String())
			p.mu.Unlock()
		}
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if fi, err := os.Stat(p.qmp); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return p
		}
		if p.gone() || time.Now().After(deadline) {
			p.mu.Lock()
			defer p.mu.Unlock()
			t.Fatalf("QEMU did not open its QMP socket: %s", p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type lockedWriter struct{ p *proc }

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

// startBare runs a QEMU with no machine: enough for QMP.
func startBare(t testing.TB, dir string) *proc {
	return startQEMU(t, dir, "-machine", "none", "-nodefaults", "-display", "none", "-S")
}

// guest is the built test guest.
type guest struct{ kernel, initrd, payload string }

var (
	guestOnce sync.Once
	guestVal  guest
	guestErr  error
)

// requireGuest builds (or finds in the shared cache) the test guest.
func requireGuest(t testing.TB) guest {
	t.Helper()
	requireQEMU(t)
	required := os.Getenv(requireEnv) == "1"
	missing := func(format string, args ...any) {
		t.Helper()
		if required {
			t.Fatalf(format+" ("+requireEnv+"=1)", args...)
		}
		t.Skipf(format+" (set "+requireEnv+"=1 to fail instead)", args...)
	}
	if os.Getenv("DWCP_GUEST_KERNEL") == "" {
		if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
			missing("no kernel in /boot: apt-get install -y linux-image-amd64")
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		missing("/bin/busybox missing: apt-get install -y busybox-static")
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		missing("cpio not found: apt-get install -y cpio")
	}
	guestOnce.Do(func() { guestVal, guestErr = buildGuest() })
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestVal
}

// buildGuest runs the guest recipe into the cache host/internal/testguest
// uses ($DWCP_CACHE/guest, else ~/.cache/dwcp/guest); the script rebuilds
// only when its inputs changed.
func buildGuest() (guest, error) {
	cache := os.Getenv("DWCP_CACHE")
	if cache == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return guest{}, err
		}
		cache = filepath.Join(base, "dwcp")
	}
	dir := filepath.Join(cache, "guest")
	script, err := filepath.Abs(filepath.Join("..", "..", "..", "testdata", "guest", "build-guest.sh"))
	if err != nil {
		return guest{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", script, dir).CombinedOutput()
	if err != nil {
		return guest{}, fmt.Errorf("build guest: %w\n%s", err, out)
	}
	g := guest{kernel: filepath.Join(dir, "vmlinuz"), initrd: filepath.Join(dir, "initramfs.gz")}
	if _, err := os.Stat(filepath.Join(dir, "payload.img")); err == nil {
		g.payload = filepath.Join(dir, "payload.img")
	}
	return g, nil
}

// startGuest boots the test guest as testguest does, with a small payload
// and a checksum every 2 s so that a test sees one soon after a migration.
func startGuest(t testing.TB, g guest, dir string, memMiB int) *proc {
	t.Helper()
	args := []string{
		"-name", "dwcp-guest", "-machine", "q35", "-accel", "tcg", "-smp", "1",
		"-m", strconv.Itoa(memMiB), "-kernel", g.kernel, "-initrd", g.initrd,
		"-append", "console=ttyS0 panic=-1 quiet dwcp.payload_mb=8 dwcp.sum_every=2",
		"-nic", "none", "-display", "none", "-monitor", "none",
		"-serial", "file:" + filepath.Join(dir, "serial.log"), "-no-reboot",
	}
	if g.payload != "" {
		args = append(args, "-drive", "file="+g.payload+",format=raw,if=virtio,readonly=on")
	}
	return startQEMU(t, dir, args...)
}

var (
	heartbeatRE = regexp.MustCompile(`DWCP hb=(\d{1,9}) up=`)
	checksumRE  = regexp.MustCompile(`DWCP sum=([0-9a-f]{32}) mb=\d+ n=(\d{1,9})`)
)

// consoleLine is the last match of re in a serial log, with its line index.
type consoleLine struct {
	line int
	m    []string
}

func lastMatch(path string, re *regexp.Regexp) (consoleLine, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return consoleLine{}, false
	}
	lines := bytes.Split(b, []byte("\n"))
	// The last line may be partial.
	for i := len(lines) - 2; i >= 0; i-- {
		if m := re.FindStringSubmatch(string(lines[i])); m != nil {
			return consoleLine{line: i, m: m}, true
		}
	}
	return consoleLine{}, false
}

// heartbeat is the latest heartbeat count on a console, or -1.
func heartbeat(path string) int {
	c, ok := lastMatch(path, heartbeatRE)
	if !ok {
		return -1
	}
	n, _ := strconv.Atoi(c.m[1])
	return n
}

// waitConsole polls a serial log until f reports true.
func waitConsole(ctx context.Context, what string, f func() bool) error {
	for !f() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// waitHeartbeat waits for a heartbeat above after and returns it.
func waitHeartbeat(ctx context.Context, path string, after int) (int, error) {
	var n int
	err := waitConsole(ctx, fmt.Sprintf("heartbeat above %d in %s", after, path), func() bool {
		n = heartbeat(path)
		return n > after
	})
	return n, err
}

// checksum is the latest checksum line on a console: its MD5 and count.
func checksum(path string) (string, int, bool) {
	c, ok := lastMatch(path, checksumRE)
	if !ok {
		return "", 0, false
	}
	n, _ := strconv.Atoi(c.m[2])
	return c.m[1], n, true
}
