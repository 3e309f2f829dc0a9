package testguest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Defaults of Config; the guest-side defaults of the knobs are in init.sh.
const (
	DefaultMemMiB = 256
	defaultSumMiB = 4
	// unixPathMax is sun_path's size on Linux; longer socket paths cannot be bound.
	unixPathMax = 108
)

// ErrExited is returned when QEMU is no longer running.
var ErrExited = errors.New("qemu exited")

// Config describes one QEMU process. The source and the destination of a migration
// must be started from the same Guest, MemMiB and Machine, or QEMU rejects the
// stream.
type Config struct {
	Guest  Guest
	MemMiB int // guest RAM; DefaultMemMiB when 0

	// Workload knobs, passed on the kernel command line as dwcp.<name>=. Zero keeps
	// the guest's default (see init.sh); a negative value sends 0, which turns a
	// writer off or lets the guest choose a size from its RAM (PayloadMiB).
	DirtyKBps    int // dwcp.dirty_kbps: KiB/s rewritten in the bulk region
	DirtyMiB     int // dwcp.dirty_mb: bulk region size
	SparsePerSec int // dwcp.sparse_per_s: 16-byte writes per second
	SparseMiB    int // dwcp.sparse_mb: sparse (text) region size
	HeapMiB      int // dwcp.heap_mb: text held in the awk heap
	SumMiB       int // dwcp.sum_mb: checksummed region
	SumEverySec  int // dwcp.sum_every: seconds between checksum lines
	PayloadMiB   int // dwcp.payload_mb: payload loaded into the tmpfs

	// Incoming, when set, starts QEMU as a migration destination: "defer" (then
	// VM.MigrateIncoming) or a URI such as "unix:/path" or "exec:cat FILE".
	Incoming string

	Name       string   // QEMU -name; "dwcp-guest" when empty
	Machine    string   // -machine; "q35" when empty
	QEMU       string   // binary; $DWCP_QEMU, else qemu-system-x86_64
	ExtraArgs  []string // appended to QEMU's command line
	ExtraKArgs string   // appended to the kernel command line
	// Netns, when set, runs QEMU inside that network namespace (`ip netns
	// exec`), e.g. a WAN-lab host, so that tcp: migration URIs reach the
	// lab's addresses.
	Netns string
	// Dir holds the VM's sockets and logs. Empty: a new temporary directory that
	// Close removes. Unix socket paths must stay under 108 bytes, so keep it short.
	Dir string
}

// QEMUBinary is the emulator Start runs: $DWCP_QEMU, else qemu-system-x86_64.
func QEMUBinary() string {
	if q := os.Getenv("DWCP_QEMU"); q != "" {
		return q
	}
	return "qemu-system-x86_64"
}

func (c Config) withDefaults() Config {
	if c.MemMiB == 0 {
		c.MemMiB = DefaultMemMiB
	}
	if c.Name == "" {
		c.Name = "dwcp-guest"
	}
	if c.Machine == "" {
		c.Machine = "q35"
	}
	if c.QEMU == "" {
		c.QEMU = QEMUBinary()
	}
	return c
}

// KernelArgs is the kernel command line for c.
func (c Config) KernelArgs() string {
	// quiet: kernel messages would slow the boot on the emulated UART and mix into
	// the protocol lines; panic=-1 with QEMU's -no-reboot turns a guest panic into
	// a QEMU exit that the host sees at once.
	args := []string{"console=ttyS0", "panic=-1", "quiet"}
	knobs := []struct {
		name string
		v    int
	}{
		{"dirty_kbps", c.DirtyKBps}, {"dirty_mb", c.DirtyMiB},
		{"sparse_per_s", c.SparsePerSec}, {"sparse_mb", c.SparseMiB},
		{"heap_mb", c.HeapMiB}, {"sum_mb", c.SumMiB},
		{"sum_every", c.SumEverySec}, {"payload_mb", c.PayloadMiB},
	}
	for _, k := range knobs {
		switch {
		case k.v > 0:
			args = append(args, "dwcp."+k.name+"="+strconv.Itoa(k.v))
		case k.v < 0:
			args = append(args, "dwcp."+k.name+"=0")
		}
	}
	if c.ExtraKArgs != "" {
		args = append(args, c.ExtraKArgs)
	}
	return strings.Join(args, " ")
}

// VM is one running QEMU process.
type VM struct {
	cfg       Config
	dir       string
	removeDir bool
	qmpPath   string // the harness's own monitor
	toolPath  string // a second monitor for the software under test
	logPath   string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd.Wait returned
	waitErr error

	qmp    *qmpClient
	serial *serialLog

	closeOnce sync.Once
	closeErr  error
}

// Start launches QEMU for cfg and connects to its QMP socket. It does not wait for
// the guest to boot (see WaitReady). The VM must be closed.
func Start(ctx context.Context, cfg Config) (*VM, error) {
	cfg = cfg.withDefaults()
	if cfg.Guest.Kernel == "" || cfg.Guest.Initrd == "" {
		return nil, errors.New("start vm: Config.Guest is not a built guest (use Build)")
	}
	if cfg.MemMiB < 64 {
		return nil, fmt.Errorf("start vm: MemMiB %d is below the 64 MiB the guest needs", cfg.MemMiB)
	}
	v := &VM{cfg: cfg, exited: make(chan struct{})}
	if cfg.Dir == "" {
		d, err := os.MkdirTemp("", "dwcp-vm-")
		if err != nil {
			return nil, fmt.Errorf("start vm: %w", err)
		}
		v.dir, v.removeDir = d, true
	} else {
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("start vm: %w", err)
		}
		v.dir = cfg.Dir
	}
	// The harness keeps its own monitor; qmp.sock is left free for the
	// software under test (a hypervisor plugin connects there): a QMP
	// socket serves one client at a time.
	v.qmpPath = filepath.Join(v.dir, "harness.sock")
	v.toolPath = filepath.Join(v.dir, "qmp.sock")
	v.logPath = filepath.Join(v.dir, "qemu.log")
	serialPath := filepath.Join(v.dir, "serial.log")
	if len(v.qmpPath) >= unixPathMax-8 {
		v.cleanupDir()
		return nil, fmt.Errorf("start vm: directory %s is too long for unix sockets", v.dir)
	}
	for _, p := range []string{v.qmpPath, v.toolPath, serialPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			v.cleanupDir()
			return nil, fmt.Errorf("start vm: %w", err)
		}
	}
	v.serial = newSerialLog(serialPath)

	args := []string{
		"-name", cfg.Name,
		"-machine", cfg.Machine,
		"-accel", "tcg",
		"-smp", "1",
		"-m", strconv.Itoa(cfg.MemMiB),
		"-kernel", cfg.Guest.Kernel,
		"-initrd", cfg.Guest.Initrd,
		"-append", cfg.KernelArgs(),
		"-nic", "none",
		"-display", "none",
		"-monitor", "none",
		"-serial", "file:" + serialPath,
		"-qmp", "unix:" + v.qmpPath + ",server=on,wait=off",
		"-qmp", "unix:" + v.toolPath + ",server=on,wait=off",
		"-no-reboot",
	}
	if cfg.Guest.Payload != "" {
		args = append(args, "-drive", "file="+cfg.Guest.Payload+",format=raw,if=virtio,readonly=on")
	}
	if cfg.Incoming != "" {
		args = append(args, "-incoming", cfg.Incoming)
	}
	args = append(args, cfg.ExtraArgs...)

	logf, err := os.Create(v.logPath)
	if err != nil {
		v.cleanupDir()
		return nil, fmt.Errorf("start vm: %w", err)
	}
	if cfg.Netns != "" {
		// ip execs QEMU after entering the namespace: same pid, so the
		// parent-death signal still applies.
		v.cmd = exec.Command("ip", append([]string{"netns", "exec", cfg.Netns, cfg.QEMU}, args...)...)
	} else {
		v.cmd = exec.Command(cfg.QEMU, args...)
	}
	v.cmd.Stdout = logf
	v.cmd.Stderr = logf
	v.cmd.SysProcAttr = childProcAttr()
	if err := v.cmd.Start(); err != nil {
		_ = logf.Close()
		v.cleanupDir()
		return nil, fmt.Errorf("start vm: %w", err)
	}
	go func() {
		v.waitErr = v.cmd.Wait()
		_ = logf.Close()
		close(v.exited)
	}()

	q, err := dialQMP(ctx, v.qmpPath, v.alive)
	if err != nil {
		_ = v.Close()
		return nil, fmt.Errorf("start vm %s: %w%s", cfg.Name, err, v.diagnostics())
	}
	v.qmp = q
	return v, nil
}

// alive returns ErrExited (with QEMU's exit status) once QEMU has exited.
func (v *VM) alive() error {
	select {
	case <-v.exited:
		return fmt.Errorf("%w: %v", ErrExited, v.waitErr)
	default:
		return nil
	}
}

// diagnostics is QEMU's own output and the end of the serial log, for errors.
func (v *VM) diagnostics() string {
	var b strings.Builder
	if log, err := os.ReadFile(v.logPath); err == nil && len(log) > 0 {
		fmt.Fprintf(&b, "\nqemu output:\n%s", tail(log, 2048))
	}
	if v.serial != nil {
		_ = v.serial.refresh()
		if t := v.serial.tailText(15); t != "" {
			fmt.Fprintf(&b, "\nserial (last lines):\n%s", t)
		}
	}
	return b.String()
}

// QMPPath is the QMP socket left for the software under test (the
// harness uses another one).
func (v *VM) QMPPath() string { return v.toolPath }

// Netns is the network namespace QEMU runs in ("" for the caller's).
func (v *VM) Netns() string { return v.cfg.Netns }

// Dir is the directory of the VM's sockets and logs.
func (v *VM) Dir() string { return v.dir }

// Pid is QEMU's process id.
func (v *VM) Pid() int { return v.cmd.Process.Pid }

// QMP runs one QMP command; args (nil for none) is marshalled as its arguments.
func (v *VM) QMP(ctx context.Context, cmd string, args any) (json.RawMessage, error) {
	if err := v.alive(); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return v.qmp.Run(ctx, cmd, args)
}

// Status is the VM's run state from query-status ("running", "paused",
// "postmigrate", "inmigrate", ...).
func (v *VM) Status(ctx context.Context) (string, error) {
	raw, err := v.QMP(ctx, "query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("query-status reply: %w", err)
	}
	return st.Status, nil
}

// WaitStatus polls query-status until the VM is in state want.
func (v *VM) WaitStatus(ctx context.Context, want string) error {
	var last string
	for {
		st, err := v.Status(ctx)
		if err != nil {
			return fmt.Errorf("wait for status %s: %w", want, err)
		}
		if st == want {
			return nil
		}
		last = st
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for status %s (still %s): %w", want, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// pollSerial calls check after each read of new serial output until it reports
// done, QEMU exits or ctx ends.
func (v *VM) pollSerial(ctx context.Context, what string, check func() bool) error {
	for {
		if err := v.serial.refresh(); err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if check() {
			return nil
		}
		if err := v.alive(); err != nil {
			_ = v.serial.refresh()
			if check() {
				return nil
			}
			return fmt.Errorf("wait for %s: %w%s", what, err, v.diagnostics())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w%s", what, ctx.Err(), v.diagnostics())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kernelFault matches the console lines of a guest kernel that broke: an
// oops, a BUG, a general protection fault, a panic. The guest boots with
// "quiet", which still lets these through (they log at KERN_ALERT or
// higher).
var kernelFault = regexp.MustCompile(`Oops|BUG:|general protection|Kernel panic|Call Trace`)

// KernelFault returns the guest's console from the first kernel fault line
// on (a few lines of it), or "" when the kernel has reported none: a guest
// whose heartbeat goes on can still have a broken kernel.
func (v *VM) KernelFault() string {
	_ = v.serial.refresh()
	i, _ := v.serial.find(0, kernelFault)
	if i < 0 {
		return ""
	}
	return v.serial.linesFrom(i, 12)
}

// WatchKernelFault watches the console for a kernel fault until ctx ends
// and returns it as KernelFault does, or "" when none came. A QEMU that
// exits meanwhile (a guest panic with -no-reboot) ends the watch too; the
// caller sees that through Heartbeat or Close.
func (v *VM) WatchKernelFault(ctx context.Context) string {
	_ = v.pollSerial(ctx, "a kernel fault", func() bool {
		i, _ := v.serial.find(0, kernelFault)
		return i >= 0
	})
	return v.KernelFault()
}

// SerialLines is the number of complete console lines read so far; pass it to
// WaitSerialFrom to wait only for output that comes later.
func (v *VM) SerialLines() int {
	_ = v.serial.refresh()
	return v.serial.count()
}

// WaitSerial waits for a console line matching re, searching from the first line,
// and returns its submatches.
func (v *VM) WaitSerial(ctx context.Context, re *regexp.Regexp) ([]string, error) {
	m, _, err := v.WaitSerialFrom(ctx, 0, re)
	return m, err
}

// WaitSerialFrom waits for a console line at index from or later matching re, and
// returns its submatches and index.
func (v *VM) WaitSerialFrom(ctx context.Context, from int, re *regexp.Regexp) ([]string, int, error) {
	var m []string
	idx := -1
	err := v.pollSerial(ctx, fmt.Sprintf("serial /%s/", re), func() bool {
		idx, m = v.serial.find(from, re)
		return idx >= 0
	})
	return m, idx, err
}

// GuestInfo is what the guest reports when its workload is up: the knobs in effect
// ("DWCP config") and its memory counters ("DWCP mem"), both key=value.
type GuestInfo struct {
	Config map[string]string
	Mem    map[string]string
}

// WaitReady waits for "DWCP ready" and returns the configuration the guest printed.
func (v *VM) WaitReady(ctx context.Context) (GuestInfo, error) {
	if _, err := v.WaitSerial(ctx, readyRE); err != nil {
		return GuestInfo{}, err
	}
	var gi GuestInfo
	if _, line := v.serial.last(func(l string) bool { return strings.Contains(l, "DWCP config ") }); line != "" {
		gi.Config, _ = parseKV(line, "DWCP config ")
	}
	if _, line := v.serial.last(func(l string) bool { return strings.Contains(l, "DWCP mem ") }); line != "" {
		gi.Mem, _ = parseKV(line, "DWCP mem ")
	}
	return gi, nil
}

// Heartbeat returns the latest heartbeat line read so far.
func (v *VM) Heartbeat() (Heartbeat, error) {
	_ = v.serial.refresh()
	i, line := v.serial.last(func(l string) bool { _, ok := parseHeartbeat(l); return ok })
	if i < 0 {
		return Heartbeat{}, errors.New("heartbeat: none on the serial console yet")
	}
	hb, _ := parseHeartbeat(line)
	hb.Line = i
	return hb, nil
}

// WaitHeartbeat waits for a heartbeat with a count above after.
func (v *VM) WaitHeartbeat(ctx context.Context, after int) (Heartbeat, error) {
	var hb Heartbeat
	err := v.pollSerial(ctx, fmt.Sprintf("heartbeat above %d", after), func() bool {
		h, err := v.Heartbeat()
		if err == nil && h.N > after {
			hb = h
			return true
		}
		return false
	})
	return hb, err
}

// Checksum returns the latest checksum line read so far.
func (v *VM) Checksum() (Checksum, error) {
	_ = v.serial.refresh()
	i, line := v.serial.last(func(l string) bool { _, ok := parseChecksum(l); return ok })
	if i < 0 {
		return Checksum{}, errors.New("checksum: none on the serial console yet")
	}
	c, _ := parseChecksum(line)
	c.Line = i
	return c, nil
}

// WaitChecksumFrom waits for a checksum line at console line index from or later.
func (v *VM) WaitChecksumFrom(ctx context.Context, from int) (Checksum, error) {
	m, idx, err := v.WaitSerialFrom(ctx, from, checksumRE)
	if err != nil {
		return Checksum{}, err
	}
	c, ok := parseChecksum(m[0])
	if !ok {
		return Checksum{}, fmt.Errorf("checksum line %d: unparsable %.80q", idx, m[0])
	}
	c.Line = idx
	return c, nil
}

// Close kills QEMU, waits for it, and removes the VM's temporary directory.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		if v.cmd == nil {
			// Attached, not started here: ask QEMU to quit.
			if v.qmp != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _ = v.qmp.Run(ctx, "quit", nil)
				cancel()
				_ = v.qmp.Close()
			}
			if v.serial != nil {
				v.serial.close()
			}
			return
		}
		if v.qmp != nil {
			_ = v.qmp.Close()
		}
		select {
		case <-v.exited:
		default:
			// SIGKILL: a guest under migration can take QEMU long to quit politely,
			// and nothing of its state is worth keeping.
			if err := v.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
				v.closeErr = fmt.Errorf("close vm %s: kill: %w", v.cfg.Name, err)
			}
			<-v.exited
		}
		if v.serial != nil {
			v.serial.close()
		}
		v.cleanupDir()
	})
	return v.closeErr
}

func (v *VM) cleanupDir() {
	if v.removeDir {
		_ = os.RemoveAll(v.dir)
	}
}
