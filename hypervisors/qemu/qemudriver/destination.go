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
	"strings"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// unixPathMax is sun_path's size on Linux: longer socket paths cannot be
// bound.
const unixPathMax = 108

// startedVM is a destination QEMU this driver started. It is a daemon
// (QEMU's own -daemonize): the plugin never waits for it, and it survives
// the plugin.
type startedVM struct {
	dir string // run directory: sockets, serial log, pid file, QEMU's log
	pid int
	qmp string
}

// PrepareDestination readies the destination QEMU and has it listen for the
// stream on req.IncomingEndpoint. With req.VM set it attaches to a QEMU the
// operator started with `-incoming defer`; with req.VM empty it starts one
// from req.Config (the source's command line, rewritten for this host).
func (d *Driver) PrepareDestination(ctx context.Context, req hypervisor.DestinationRequest) (string, hypervisor.VMRef, error) {
	if req.IncomingEndpoint == "" {
		return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination: %w: empty incoming endpoint", sdk.ErrInvalidArgument)
	}
	m := &migration{id: newID("dst-"), role: roleDestination, vm: req.VM.Address}
	if m.vm == "" {
		if req.Config.Hypervisor != "qemu" {
			return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination: %w: config is for hypervisor %q, not qemu", sdk.ErrInvalidArgument, req.Config.Hypervisor)
		}
		cfg, err := decodeConfig(req.Config.Data)
		if err != nil {
			return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination: %w", err)
		}
		sctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
		vm, err := d.startVM(sctx, m.id, cfg)
		cancel()
		if err != nil {
			return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination: %w", err)
		}
		m.started, m.vm = vm, vm.qmp
	}
	if err := d.reserve(m); err != nil {
		d.destroy(m)
		return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination: %w", err)
	}
	if err := d.prepareIncoming(ctx, m, req); err != nil {
		d.forget(m)
		d.destroy(m)
		return "", hypervisor.VMRef{}, fmt.Errorf("prepare destination %s: %w", m.vm, err)
	}
	d.register(m)
	d.log.Info("destination prepared", "migration", m.id, "vm", m.vm, "started", m.started != nil, "endpoint", req.IncomingEndpoint)
	return m.id, hypervisor.VMRef{Address: m.vm}, nil
}

func (d *Driver) prepareIncoming(ctx context.Context, m *migration, req hypervisor.DestinationRequest) error {
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return err
	}
	var rs runStatus
	if err := mon.run(ctx, "query-status", nil, &rs); err != nil {
		return err
	}
	if rs.Status != "inmigrate" {
		return fmt.Errorf("%w: VM is %s, not waiting for an incoming migration (start QEMU with -incoming defer)", sdk.ErrFailedPrecondition, rs.Status)
	}
	cur, err := queryMigrate(ctx, mon)
	if err != nil {
		return err
	}
	if cur.State != stateNone {
		return fmt.Errorf("%w: an incoming migration is already %s", sdk.ErrFailedPrecondition, cur.State)
	}
	if err := setCapabilities(ctx, mon, req.Params.Capabilities); err != nil {
		return err
	}
	if err := d.setParameters(ctx, m, mon, req.Params, false); err != nil {
		return err
	}
	if err := mon.run(ctx, "migrate-incoming", map[string]any{"uri": "unix:" + req.IncomingEndpoint}, nil); err != nil {
		return err
	}
	m.mu.Lock()
	m.migrating = true
	m.mu.Unlock()
	return nil
}

// deniedOptions cannot be carried to another host: -add-fd names the
// source process's file descriptors, and -plugin loads a shared object into
// QEMU, which a config received from a peer must not choose.
var deniedOptions = map[string]string{
	"-add-fd": "names file descriptors of the source process",
	"-plugin": "loads a shared object chosen by the sender",
}

// qemuBinaryRE is what a started VM's program may be called: a config from
// a peer must not choose an arbitrary program to run.
var qemuBinaryRE = regexp.MustCompile(`^qemu-(system-[a-z0-9_]+|kvm)$`)

// binaryFor picks the emulator for a started VM: the configured one, else
// the source's argv[0] when it exists here, else its name in PATH.
func (d *Driver) binaryFor(argv0 string) (string, error) {
	if d.cfg.QEMU != "" {
		return exec.LookPath(d.cfg.QEMU)
	}
	if !qemuBinaryRE.MatchString(filepath.Base(argv0)) {
		return "", fmt.Errorf("%w: program %q is not a QEMU system emulator", sdk.ErrInvalidArgument, argv0)
	}
	if filepath.IsAbs(argv0) {
		if fi, err := os.Stat(argv0); err == nil && fi.Mode().IsRegular() {
			return argv0, nil
		}
	}
	p, err := exec.LookPath(filepath.Base(argv0))
	if err != nil {
		return "", fmt.Errorf("%w: %w", sdk.ErrUnavailable, err)
	}
	return p, nil
}

// startVM starts a destination QEMU for cfg in a new run directory and
// waits until its QMP socket exists. On failure nothing is left behind.
func (d *Driver) startVM(ctx context.Context, id string, cfg vmConfig) (*startedVM, error) {
	for _, o := range splitArgv(cfg.Argv[1:]) {
		if why, ok := deniedOptions[o.name]; ok {
			return nil, fmt.Errorf("start vm: %w: option %s %s", sdk.ErrUnsupported, o.name, why)
		}
	}
	bin, err := d.binaryFor(cfg.Argv[0])
	if err != nil {
		return nil, fmt.Errorf("start vm: %w", err)
	}
	if err := os.MkdirAll(d.cfg.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("start vm: run directory: %w", err)
	}
	vm := &startedVM{dir: filepath.Join(d.cfg.RunDir, id)}
	vm.qmp = filepath.Join(vm.dir, "qmp.sock")
	// The longest name the rewrite makes is "chardevlogNN.log"-sized.
	if len(vm.dir)+24 >= unixPathMax {
		return nil, fmt.Errorf("start vm: %w: run directory %s is too long for unix sockets", sdk.ErrInvalidArgument, d.cfg.RunDir)
	}
	if err := os.Mkdir(vm.dir, 0o750); err != nil {
		return nil, fmt.Errorf("start vm: %w", err)
	}
	argv, err := rewriteArgv(cfg, vm.dir)
	if err != nil {
		_ = os.RemoveAll(vm.dir)
		return nil, fmt.Errorf("start vm: %w", err)
	}
	logPath := filepath.Join(vm.dir, "qemu.log")
	logf, err := os.Create(logPath)
	if err != nil {
		_ = os.RemoveAll(vm.dir)
		return nil, fmt.Errorf("start vm: %w", err)
	}
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Dir = vm.dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detachedAttr()
	d.log.Info("starting destination QEMU", "migration", id, "dir", vm.dir, "argv", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		_ = os.RemoveAll(vm.dir)
		return nil, fmt.Errorf("start vm: %s: %w", bin, err)
	}
	// With -daemonize, the process we started exits once the VM's
	// process has initialised (sockets bound) or failed to.
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-exited:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-exited
		_ = logf.Close()
		d.destroyVM(vm)
		return nil, fmt.Errorf("start vm: %w: QEMU did not start in time: %w", sdk.ErrUnavailable, ctx.Err())
	}
	_ = logf.Close()
	if werr != nil {
		msg := logTail(logPath)
		d.destroyVM(vm)
		return nil, fmt.Errorf("start vm: %s: %w: %s", bin, werr, msg)
	}
	pid, err := readPidfile(filepath.Join(vm.dir, "qemu.pid"))
	if err != nil {
		d.destroyVM(vm)
		return nil, fmt.Errorf("start vm: %w", err)
	}
	vm.pid = pid
	for {
		if fi, err := os.Stat(vm.qmp); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return vm, nil
		}
		if processGone(pid) {
			msg := logTail(logPath)
			d.destroyVM(vm)
			return nil, fmt.Errorf("start vm: QEMU (pid %d) exited: %s", pid, msg)
		}
		select {
		case <-ctx.Done():
			d.destroyVM(vm)
			return nil, fmt.Errorf("start vm: %w: no QMP socket: %w", sdk.ErrUnavailable, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", path, bytes.TrimSpace(b))
	}
	return pid, nil
}

// logTail is the end of QEMU's own output, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no QEMU output)"
	}
	b = bytes.TrimSpace(b)
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	if len(b) == 0 {
		return "(no QEMU output)"
	}
	return string(b)
}

// destroy kills the VM a migration started, if any.
func (d *Driver) destroy(m *migration) {
	if m.started != nil {
		m.release()
		d.destroyVM(m.started)
	}
}

// destroyVM kills a started VM and removes its run directory. The pid is
// checked against the run directory first: a pid file can outlive its
// process, and the number may belong to someone else by now.
func (d *Driver) destroyVM(vm *startedVM) {
	pid := vm.pid
	if pid == 0 {
		pid, _ = readPidfile(filepath.Join(vm.dir, "qemu.pid"))
	}
	if pid > 0 && !processGone(pid) {
		argv, err := readCmdline(pid)
		if err == nil && strings.Contains(strings.Join(argv, "\x00"), vm.dir+string(filepath.Separator)) {
			if err := killProcess(pid, 5*time.Second); err != nil {
				d.log.Error("cannot kill started VM", "pid", pid, "dir", vm.dir, "error", err)
			}
		} else {
			d.log.Warn("not killing pid: it is not the VM started in this run directory", "pid", pid, "dir", vm.dir)
		}
	}
	if err := os.RemoveAll(vm.dir); err != nil {
		d.log.Warn("cannot remove run directory", "dir", vm.dir, "error", err)
	}
}

// cancelDestination abandons an incoming migration: a VM this driver
// started is killed (it never ran: it waited with -S), one the operator
// started is left as it is.
func (d *Driver) cancelDestination(ctx context.Context, m *migration) error {
	st := hypervisor.Status{State: stateCancelled}
	if m.started == nil {
		m.note("attached destination VM left as it is; stop it yourself if it is not needed")
	}
	if cur, err := d.query(ctx, m); err == nil && finalState(cur.State) && cur.State != stateCompleted {
		st = cur
	}
	m.setFinal(st)
	d.destroy(m)
	d.unclaim(m)
	d.log.Info("destination migration cancelled", "migration", m.id, "started", m.started != nil)
	return nil
}

// finishMode says how a destination migration ends.
type finishMode int

const (
	finishDiscard finishMode = iota // abandon: a started VM is killed
	finishResume                    // run the VM (cont)
	finishPaused                    // leave the loaded VM paused
)

func (d *Driver) finishDestination(ctx context.Context, m *migration, mode finishMode) (hypervisor.Status, error) {
	mon, err := m.monitor(ctx, d)
	if err != nil && mode == finishDiscard && m.started != nil {
		// A started VM that died is cleaned up all the same.
		d.destroy(m)
		st := hypervisor.Status{State: stateFailed, Error: err.Error()}
		m.setFinal(st)
		return st, nil
	}
	if err != nil {
		return hypervisor.Status{}, err
	}
	if mode == finishDiscard {
		st, err := queryMigrate(ctx, mon)
		if err != nil {
			st = hypervisor.Status{State: stateFailed, Error: err.Error()}
		}
		m.setFinal(st)
		d.destroy(m)
		return st, nil
	}
	st, err := queryMigrate(ctx, mon)
	if err != nil {
		return st, err
	}
	if st.State == stateNone {
		return st, fmt.Errorf("%w: no stream has arrived, nothing to finish", sdk.ErrFailedPrecondition)
	}
	if !finalState(st.State) {
		// The source reports completed once the destination sent SHUT on
		// the return path; the destination's own state may lag by a
		// moment, not more.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err = waitFinal(wctx, mon)
		cancel()
		if err != nil {
			return st, fmt.Errorf("%w: %w", sdk.ErrFailedPrecondition, err)
		}
	}
	if st.State != stateCompleted {
		return st, fmt.Errorf("%w: incoming migration %s, nothing to finish: %s", sdk.ErrFailedPrecondition, st.State, st.Error)
	}
	var rs runStatus
	if err := mon.run(ctx, "query-status", nil, &rs); err != nil {
		return st, err
	}
	if mode == finishPaused {
		// Started with -S, QEMU leaves a loaded VM "paused". Anything
		// else is not the state the caller asked for; a running VM
		// (an attached QEMU started without -S) cannot be un-run.
		if rs.Running || rs.Status != "paused" {
			return st, fmt.Errorf("%w: destination VM is %s after the migration, not paused (an attached QEMU must be started with -S)", sdk.ErrFailedPrecondition, rs.Status)
		}
		m.setFinal(st)
		return st, nil
	}
	if !rs.Running {
		if err := mon.run(ctx, "cont", nil, nil); err != nil {
			return st, fmt.Errorf("resume destination VM (%s): %w", rs.Status, err)
		}
		if err := mon.run(ctx, "query-status", nil, &rs); err != nil {
			return st, err
		}
		if !rs.Running {
			return st, fmt.Errorf("%w: destination VM is %s after cont", sdk.ErrFailedPrecondition, rs.Status)
		}
	}
	m.setFinal(st)
	return st, nil
}
