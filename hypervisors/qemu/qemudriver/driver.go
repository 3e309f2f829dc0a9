package qemudriver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// Environment variables the driver reads (ConfigFromEnv).
const (
	EnvQMPDir = "DWCP_QEMU_QMP_DIR" // where ListVMs looks for QMP sockets
	EnvRunDir = "DWCP_QEMU_RUN_DIR" // where started destination VMs live
	EnvQEMU   = "DWCP_QEMU"         // the emulator binary
)

// DefaultDir is the default of both the QMP and the run directory.
const DefaultDir = "/run/dwcp/qemu"

// DefaultMaxBandwidth is the max-bandwidth set when the host leaves
// Params.MaxBandwidth at zero. QEMU's own default (128 MiB/s in 7.2)
// silently caps every migration; the host's relay applies backpressure
// itself, so the driver lifts QEMU's cap unless told a number.
const DefaultMaxBandwidth = 64 << 30

// maxDowntimeLimit is QEMU's upper bound for downtime-limit (2000 s).
const maxDowntimeLimit = 2000 * time.Second

// Config configures a Driver.
type Config struct {
	// QEMU is the emulator binary for the fingerprint probe and for started
	// VMs; empty: $DWCP_QEMU, else the source's own argv[0] when it exists
	// here, else qemu-system-x86_64 from PATH.
	QEMU string
	// QMPDir holds the QMP sockets ListVMs reports (and run directories of
	// started VMs, one level down).
	QMPDir string
	// RunDir is where destination VMs the driver starts get a directory.
	RunDir string
	// PollInterval is the query-migrate period of WatchMigration (500 ms).
	PollInterval time.Duration
	// CallTimeout bounds one QMP exchange inside a longer operation such as
	// a watch (10 s).
	CallTimeout time.Duration
	// ListTimeout bounds the inspection of one socket in ListVMs (2 s): a
	// monitor held by another client never answers.
	ListTimeout time.Duration
	// StartTimeout bounds starting a destination QEMU (60 s).
	StartTimeout time.Duration
	Logger       hclog.Logger
}

// ConfigFromEnv is the Config the plugin binary uses.
func ConfigFromEnv() Config {
	return Config{QEMU: os.Getenv(EnvQEMU), QMPDir: os.Getenv(EnvQMPDir), RunDir: os.Getenv(EnvRunDir)}
}

func (c Config) withDefaults() Config {
	if c.QMPDir == "" {
		c.QMPDir = DefaultDir
	}
	if c.RunDir == "" {
		c.RunDir = DefaultDir
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.ListTimeout <= 0 {
		c.ListTimeout = 2 * time.Second
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 60 * time.Second
	}
	if c.Logger == nil {
		c.Logger = hclog.NewNullLogger()
	}
	return c
}

// Driver implements hypervisor.Hypervisor for QEMU.
type Driver struct {
	cfg     Config
	log     hclog.Logger
	pipeDir string

	// life ends watchers when the driver closes; wg waits for them.
	life    context.Context
	endLife context.CancelFunc
	wg      sync.WaitGroup

	mu         sync.Mutex
	migrations map[string]*migration
	byVM       map[string]*migration // QMP socket → the migration holding it
	closed     bool

	probeMu sync.Mutex
	caps    *hypervisor.Capabilities
}

var _ hypervisor.Hypervisor = (*Driver)(nil)

// New returns a driver. It starts nothing; Close releases what later calls
// took (monitors, watchers), but never a VM.
func New(cfg Config) (*Driver, error) {
	cfg = cfg.withDefaults()
	dir, err := os.MkdirTemp("", "dwcp-qmp-")
	if err != nil {
		return nil, fmt.Errorf("qemu driver: pipe directory: %w", err)
	}
	life, end := context.WithCancel(context.Background())
	return &Driver{
		cfg: cfg, log: cfg.Logger, pipeDir: dir, life: life, endLife: end,
		migrations: map[string]*migration{}, byVM: map[string]*migration{},
	}, nil
}

// Close ends every watch and closes every monitor. VMs keep running, and
// migrations in flight go on in QEMU; only this driver's view of them ends.
func (d *Driver) Close() error {
	d.mu.Lock()
	d.closed = true
	ms := make([]*migration, 0, len(d.migrations))
	for _, m := range d.migrations {
		ms = append(ms, m)
	}
	d.mu.Unlock()
	d.endLife()
	d.wg.Wait()
	for _, m := range ms {
		m.release()
	}
	return os.RemoveAll(d.pipeDir)
}

// dial opens a new monitor on the socket at path.
func (d *Driver) dial(ctx context.Context, path string) (*monitor, error) {
	return dialMonitor(ctx, path, d.pipeDir, d.log)
}

// withMonitor runs f with a monitor on path: the one a migration holds
// (QEMU serves one QMP client at a time, so a second connection would wait
// forever), or a fresh one closed afterwards.
func (d *Driver) withMonitor(ctx context.Context, path string, f func(*monitor) error) error {
	d.mu.Lock()
	m := d.byVM[path]
	d.mu.Unlock()
	if m != nil {
		mon, err := m.monitor(ctx, d)
		if err == nil {
			return f(mon)
		}
		if !errors.Is(err, sdk.ErrFailedPrecondition) {
			return err
		}
		// The migration just ended and let go of the socket.
	}
	mon, err := d.dial(ctx, path)
	if err != nil {
		return err
	}
	defer mon.Close()
	return f(mon)
}

// qemuBinary is the emulator for the probe and, failing better knowledge,
// for started VMs.
func (d *Driver) qemuBinary() string {
	if d.cfg.QEMU != "" {
		return d.cfg.QEMU
	}
	return "qemu-system-x86_64"
}

// Capabilities fingerprints the local QEMU by starting a throwaway
// `-machine none` process and asking it. The answer is cached; a failure
// is not, so a QEMU installed later is found.
func (d *Driver) Capabilities(ctx context.Context) (hypervisor.Capabilities, error) {
	d.probeMu.Lock()
	defer d.probeMu.Unlock()
	if d.caps != nil {
		return cloneCaps(*d.caps), nil
	}
	caps, err := d.probe(ctx)
	if err != nil {
		return hypervisor.Capabilities{Hypervisor: "qemu"}, err
	}
	d.caps = &caps
	return cloneCaps(caps), nil
}

func cloneCaps(c hypervisor.Capabilities) hypervisor.Capabilities {
	c.MachineTypes = slices.Clone(c.MachineTypes)
	c.MigrationCapabilities = slices.Clone(c.MigrationCapabilities)
	c.MigrationParameters = slices.Clone(c.MigrationParameters)
	return c
}

func (d *Driver) probe(ctx context.Context) (hypervisor.Capabilities, error) {
	caps := hypervisor.Capabilities{Hypervisor: "qemu", CanStartDestination: true, FinishPaused: true}
	bin, err := exec.LookPath(d.qemuBinary())
	if err != nil {
		return caps, fmt.Errorf("qemu fingerprint: %w: %w", sdk.ErrUnavailable, err)
	}
	dir, err := os.MkdirTemp("", "dwcp-probe-")
	if err != nil {
		return caps, fmt.Errorf("qemu fingerprint: %w", err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")
	var out strings.Builder
	cmd := exec.Command(bin, "-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	cmd.Stdout, cmd.Stderr = &limitedWriter{w: &out, n: 4096}, &limitedWriter{w: &out, n: 4096}
	cmd.SysProcAttr = helperAttr()
	if err := cmd.Start(); err != nil {
		return caps, fmt.Errorf("qemu fingerprint: start %s: %w: %w", bin, sdk.ErrUnavailable, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		// quit was sent on success; a probe that does not leave in time,
		// or any failure, ends with SIGKILL.
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	var mon *monitor
	for mon == nil {
		mon, err = d.dial(ctx, sock)
		if err == nil {
			break
		}
		if !errors.Is(err, sdk.ErrNotFound) && !errors.Is(err, sdk.ErrUnavailable) {
			_ = cmd.Process.Kill()
			return caps, fmt.Errorf("qemu fingerprint: %w", err)
		}
		select {
		case werr := <-exited:
			exited <- werr
			return caps, fmt.Errorf("qemu fingerprint: %s exited: %w: %v: %s", bin, sdk.ErrUnavailable, werr, strings.TrimSpace(out.String()))
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return caps, fmt.Errorf("qemu fingerprint: %w: no QMP socket: %w", sdk.ErrUnavailable, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer mon.Close()
	caps.Version = mon.version.String()
	var machines []struct {
		Name  string `json:"name"`
		Alias string `json:"alias"`
	}
	var migCaps []migrationCapability
	params := map[string]any{}
	for _, q := range []struct {
		cmd string
		out any
	}{
		{"query-machines", &machines},
		{"query-migrate-capabilities", &migCaps},
		{"query-migrate-parameters", &params},
	} {
		if err := mon.run(ctx, q.cmd, nil, q.out); err != nil {
			_ = cmd.Process.Kill()
			return caps, fmt.Errorf("qemu fingerprint: %w", err)
		}
	}
	for _, m := range machines {
		caps.MachineTypes = append(caps.MachineTypes, m.Name)
		if m.Alias != "" {
			caps.MachineTypes = append(caps.MachineTypes, m.Alias)
		}
	}
	slices.Sort(caps.MachineTypes)
	caps.MachineTypes = slices.Compact(caps.MachineTypes)
	for _, c := range migCaps {
		caps.MigrationCapabilities = append(caps.MigrationCapabilities, c.Capability)
	}
	for k := range params {
		caps.MigrationParameters = append(caps.MigrationParameters, k)
	}
	slices.Sort(caps.MigrationParameters)
	if err := mon.run(ctx, "quit", nil, nil); err != nil && !errors.Is(err, sdk.ErrUnavailable) {
		// QEMU may close the socket before its reply reaches us; only a
		// real refusal matters, and the deferred kill handles that.
		d.log.Debug("probe quit", "error", err)
	}
	return caps, nil
}

// limitedWriter keeps the first n bytes written to it.
type limitedWriter struct {
	w interface{ WriteString(string) (int, error) }
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		_, _ = l.w.WriteString(string(p[:k]))
		l.n -= k
	}
	return len(p), nil
}

// ListVMs inspects every QMP socket in the QMP directory, and the qmp.sock
// of every run directory one level down, skipping sockets nobody answers
// on. A missing directory is an empty list.
func (d *Driver) ListVMs(ctx context.Context) ([]hypervisor.VMInfo, error) {
	entries, err := os.ReadDir(d.cfg.QMPDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list vms in %s: %w: %w", d.cfg.QMPDir, sdk.ErrUnavailable, err)
	}
	var socks []string
	for _, e := range entries {
		p := filepath.Join(d.cfg.QMPDir, e.Name())
		switch {
		case e.Type()&os.ModeSocket != 0:
			socks = append(socks, p)
		case e.IsDir():
			q := filepath.Join(p, "qmp.sock")
			if fi, err := os.Stat(q); err == nil && fi.Mode()&os.ModeSocket != 0 {
				socks = append(socks, q)
			}
		}
	}
	var vms []hypervisor.VMInfo
	for _, s := range socks {
		if err := ctx.Err(); err != nil {
			return vms, fmt.Errorf("list vms: %w", err)
		}
		cctx, cancel := context.WithTimeout(ctx, d.cfg.ListTimeout)
		info, err := d.InspectVM(cctx, hypervisor.VMRef{Address: s})
		cancel()
		if err != nil {
			d.log.Debug("skipping QMP socket", "path", s, "error", err)
			continue
		}
		vms = append(vms, info)
	}
	return vms, nil
}

// InspectVM asks the VM behind a QMP socket for its name, state, memory and
// machine type, and reads its command line (through the socket's peer
// credentials) into Config.
func (d *Driver) InspectVM(ctx context.Context, ref hypervisor.VMRef) (hypervisor.VMInfo, error) {
	var info hypervisor.VMInfo
	err := d.withMonitor(ctx, ref.Address, func(mon *monitor) error {
		var err error
		info, err = d.inspect(ctx, mon)
		return err
	})
	if err != nil {
		return hypervisor.VMInfo{}, fmt.Errorf("inspect vm %s: %w", ref.Address, err)
	}
	return info, nil
}

func (d *Driver) inspect(ctx context.Context, mon *monitor) (hypervisor.VMInfo, error) {
	info := hypervisor.VMInfo{Ref: hypervisor.VMRef{Address: mon.path}}
	var name struct {
		Name string `json:"name"`
	}
	var st runStatus
	var mem struct {
		Base    uint64 `json:"base-memory"`
		Plugged uint64 `json:"plugged-memory"`
	}
	var typ string
	for _, q := range []struct {
		cmd  string
		args any
		out  any
	}{
		{"query-name", nil, &name},
		{"query-status", nil, &st},
		{"query-memory-size-summary", nil, &mem},
		{"qom-get", map[string]string{"path": "/machine", "property": "type"}, &typ},
	} {
		if err := mon.run(ctx, q.cmd, q.args, q.out); err != nil {
			return info, err
		}
	}
	info.Name, info.State = name.Name, st.Status
	info.MemoryBytes = mem.Base + mem.Plugged
	// QOM names the machine class "<type>-machine".
	info.MachineType = strings.TrimSuffix(typ, "-machine")
	if mon.pid == 0 {
		d.log.Warn("QEMU pid unknown; the VM's config is empty and it cannot be started elsewhere", "path", mon.path)
		return info, nil
	}
	argv, err := readCmdline(mon.pid)
	if err != nil {
		d.log.Warn("cannot read the VM's command line; its config is empty", "path", mon.path, "error", err)
		return info, nil
	}
	data, err := encodeConfig(vmConfig{
		Argv: argv, Machine: info.MachineType, QMPPath: mon.path,
		QEMUVersion: mon.version.String(), MemoryBytes: info.MemoryBytes,
	})
	if err != nil {
		return info, err
	}
	info.Config = hypervisor.VMConfig{Hypervisor: "qemu", Data: data}
	return info, nil
}
