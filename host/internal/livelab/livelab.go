// Package livelab runs live migrations of the test guest between two hosts
// of the WAN lab — through DWCP (the real dwcp binary and plugins) and
// with QEMU's own migration — and measures each the same way. The demo,
// the end-to-end tests and the benchmarks share it.
//
// It owns scenario plumbing only; everything it measures is the real
// product (dwcp, plugins, QEMU) over the lab's shaped link.
package livelab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Config describes a scenario.
type Config struct {
	// Profile is a WAN-lab profile name ("internet", "dc", ...).
	Profile string
	// Dwcp is the dwcp binary; PluginDir its pinned plugin directory (it
	// must hold the qemu hypervisor plugin and the codecs).
	Dwcp, PluginDir string
	// Guest settings for every VM of the scenario.
	Guest testguest.Config
	// Log receives progress lines (optional).
	Log io.Writer
}

// Env is a running lab with dwcp serve on both hosts.
type Env struct {
	cfg     Config
	Lab     *wanlab.Lab
	A, B    *wanlab.Host
	dir     string
	certs   string
	serves  map[*wanlab.Host]*exec.Cmd
	waits   sync.WaitGroup
	port    int
	dwcpLog *bytes.Buffer
	mu      sync.Mutex
	where   map[*testguest.VM]*wanlab.Host
	unlock  func()
}

// lockFile is the machine-wide lock that lets one live lab run at a time.
var lockFile = filepath.Join(os.TempDir(), "dwcp-livelab.lock")

// lockLabs waits, until ctx ends, for the machine-wide live-lab lock and
// returns its release. Two live labs at once (go test runs packages in
// parallel: the report's CLI test and livebench's both migrate TCG guests)
// put four QEMUs, two shapers and four dwcp serves on two cores: every
// time and rate either measures is then the other's load, and both guest
// failures of one clean-clone CI run struck in the same second, in two
// such labs (docs/migration.md, "Data integrity"). The lock is an flock,
// so a process that dies releases it.
func lockLabs(ctx context.Context, logf func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("livelab: lock %s: %w", lockFile, err)
	}
	for waited := false; ; waited = true {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("livelab: lock %s: %w", lockFile, err)
		}
		if !waited {
			logf("livelab: another live lab runs on this machine; waiting for it to finish")
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("livelab: waiting for another live lab to finish: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

const servePort = 4650

func (e *Env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, format+"\n", args...)
	}
}

// New creates the lab, certificates, and starts `dwcp serve` on both hosts.
func New(ctx context.Context, cfg Config) (*Env, error) {
	prof, err := wanlab.LookupProfile(cfg.Profile)
	if err != nil {
		return nil, fmt.Errorf("livelab: %w", err)
	}
	e := &Env{cfg: cfg, port: servePort, dwcpLog: &bytes.Buffer{},
		where: map[*testguest.VM]*wanlab.Host{}, serves: map[*wanlab.Host]*exec.Cmd{}}
	if e.unlock, err = lockLabs(ctx, e.logf); err != nil {
		return nil, err
	}
	lab, err := wanlab.New(ctx, wanlab.Config{Hosts: 2, Profile: prof})
	if err != nil {
		e.unlock()
		return nil, err
	}
	e.Lab, e.A, e.B = lab, lab.Host(0), lab.Host(1)
	if e.dir, err = os.MkdirTemp("", "dwcp-livelab-"); err != nil {
		e.Close()
		return nil, err
	}
	e.certs = filepath.Join(e.dir, "certs")
	steps := [][]string{
		{"certs", "init", "--dir", e.certs},
		{"certs", "issue", "--dir", e.certs, "--name", "hosta", "--ip", e.A.Addr.String()},
		{"certs", "issue", "--dir", e.certs, "--name", "hostb", "--ip", e.B.Addr.String()},
	}
	for _, s := range steps {
		if out, err := exec.CommandContext(ctx, cfg.Dwcp, s...).CombinedOutput(); err != nil {
			e.Close()
			return nil, fmt.Errorf("livelab: dwcp %s: %v\n%s", strings.Join(s, " "), err, out)
		}
	}
	for _, h := range []*wanlab.Host{e.A, e.B} {
		if err := e.StartServe(ctx, h); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

func (e *Env) nameOf(h *wanlab.Host) string {
	if h == e.A {
		return "hosta"
	}
	return "hostb"
}

// KillServe SIGKILLs the dwcp serve of host h (a destination host dying).
func (e *Env) KillServe(h *wanlab.Host) {
	e.mu.Lock()
	cmd := e.serves[h]
	delete(e.serves, h)
	e.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// stopServe ends the dwcp serve of host h as an operator would: SIGTERM,
// then SIGKILL if it has not exited within five seconds.
func (e *Env) stopServe(h *wanlab.Host) {
	e.mu.Lock()
	cmd := e.serves[h]
	delete(e.serves, h)
	e.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		_ = cmd.Wait()
	}()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// StartServe starts dwcp serve on host h.
func (e *Env) StartServe(ctx context.Context, h *wanlab.Host) error {
	name := e.nameOf(h)
	runDir := filepath.Join(e.dir, name+"-vms")
	out := filepath.Join(e.dir, name+"-files")
	for _, d := range []string{runDir, out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	cmd := e.Lab.Command(h, e.cfg.Dwcp, "serve", "--listen", fmt.Sprintf("%s:%d", h.Addr, e.port),
		"--certs", e.certs, "--name", name, "--plugin-dir", e.cfg.PluginDir, "--out-dir", out)
	cmd.Env = append(os.Environ(), "DWCP_QEMU_RUN_DIR="+runDir, "DWCP_STATE="+filepath.Join(e.dir, name+"-state"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = &lockedWriter{mu: &e.mu, w: e.dwcpLog}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("livelab: start dwcp serve on %s: %w", h.Name, err)
	}
	e.mu.Lock()
	e.serves[h] = cmd
	e.mu.Unlock()
	ready := make(chan error, 1)
	e.waits.Add(1)
	go func() {
		defer e.waits.Done()
		sc := bufio.NewScanner(stdout)
		first := true
		for sc.Scan() {
			line := sc.Text()
			if first {
				first = false
				if strings.Contains(line, "listening on") {
					ready <- nil
				} else {
					ready <- fmt.Errorf("dwcp serve on %s: %s", h.Name, line)
				}
			}
			e.logf("  [%s serve] %s", name, line)
		}
		if first {
			ready <- fmt.Errorf("dwcp serve on %s exited at once: %s", h.Name, e.ServeLog())
		}
	}()
	select {
	case err := <-ready:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(60 * time.Second):
		return fmt.Errorf("dwcp serve on %s did not start: %s", h.Name, e.ServeLog())
	}
}

// ServeLog is what the dwcp serve processes wrote to stderr.
func (e *Env) ServeLog() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dwcpLog.String()
}

// Close stops the servers and removes the lab.
func (e *Env) Close() {
	for _, h := range []*wanlab.Host{e.A, e.B} {
		e.stopServe(h)
	}
	e.waits.Wait()
	if e.Lab != nil {
		_ = e.Lab.Close()
	}
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
	if e.unlock != nil {
		e.unlock()
		e.unlock = nil
	}
}

// Boot starts the test guest on host h and waits until its workload runs.
func (e *Env) Boot(ctx context.Context, h *wanlab.Host) (*testguest.VM, error) {
	cfg := e.cfg.Guest
	cfg.Netns = h.NetNS
	vm, err := testguest.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := vm.WaitReady(ctx); err != nil {
		vm.Close()
		return nil, err
	}
	return vm, nil
}

// Row is one migration's measurements.
type Row struct {
	Method string `json:"method"`
	From   string `json:"from"`
	To     string `json:"to"`
	// Total is the wall time from the command to the destination running.
	Total time.Duration `json:"total"`
	// Downtime is from the source VM stopping to the destination VM running
	// (see each method for how it is observed).
	Downtime time.Duration `json:"downtime"`
	// QEMUDowntime is what the source QEMU reports.
	QEMUDowntime time.Duration `json:"qemu_downtime"`
	// WireBytes is what crossed the lab link from source to destination
	// (IP packets: payload, TLS, TCP/IP headers, retransmissions).
	WireBytes uint64 `json:"wire_bytes"`
	// StreamBytes is QEMU's own stream size (ram.transferred for native
	// runs; the stream DWCP carried).
	StreamBytes uint64 `json:"stream_bytes"`
	Passes      uint64 `json:"passes"`
	// KnownPages is how many pages DWCP sent as references to its page
	// history (pages the destination held from an earlier migration).
	KnownPages uint64 `json:"known_pages,omitempty"`
	// WirePackets and ReturnPackets count the IP packets the lab carried
	// source->destination and back (ACKs, the return path): the lab's
	// packet shaper costs CPU per packet, so at datacenter rates a method
	// that sends smaller segments pays for it on these two cores.
	WirePackets   uint64 `json:"wire_packets"`
	ReturnPackets uint64 `json:"return_packets"`
	Heartbeat     string `json:"heartbeat"`
	Note          string `json:"note,omitempty"`
}

// linkBytes is what the lab forwarded from one host to the other so far.
func (e *Env) linkBytes(from, to *wanlab.Host) uint64 { return e.linkCount(from, to).bytes }

// linkCount is what the lab forwarded between two hosts, both ways.
type linkCount struct{ bytes, packets, returnPackets uint64 }

func (e *Env) linkCount(from, to *wanlab.Host) linkCount {
	var c linkCount
	if st, err := e.Lab.LinkStats(from, to); err == nil {
		c.bytes, c.packets = st.ForwardedBytes, st.Forwarded
	}
	if st, err := e.Lab.LinkStats(to, from); err == nil {
		c.returnPackets = st.Forwarded
	}
	return c
}

// count fills the row's link figures: what the lab forwarded since c0.
func (r *Row) count(c0, c1 linkCount) {
	r.WireBytes, r.WirePackets, r.ReturnPackets = c1.bytes-c0.bytes, c1.packets-c0.packets, c1.returnPackets-c0.returnPackets
}

// dwcpSummary mirrors `dwcp migrate --json`.
type dwcpSummary struct {
	Destination       string  `json:"destination_vm"`
	DestinationPaused bool    `json:"destination_paused"`
	TotalSeconds      float64 `json:"total_seconds"`
	DowntimeMs        float64 `json:"downtime_ms"`
	QEMUDowntimeMs    float64 `json:"qemu_reported_downtime_ms"`
	StreamBytes       uint64  `json:"stream_bytes"`
	WireBytes         uint64  `json:"bytes_on_wire"`
	Passes            uint64  `json:"passes"`
	Pages             struct {
		Known uint64 `json:"Known"`
	} `json:"pages"`
}

// DWCP migrates src from host `from` to host `to` with `dwcp migrate`
// and returns the row and the destination VM (attached; Close quits it),
// once the guest's checks passed there (checkGuest). Downtime is dwcp's
// own measurement: from the source QEMU's stop event to the destination's
// report that its VM runs. Ending ctx interrupts dwcp migrate as Ctrl-C
// would.
func (e *Env) DWCP(ctx context.Context, src *testguest.VM, from, to *wanlab.Host, mode string, extra ...string) (Row, *testguest.VM, error) {
	beforeHB, _ := src.Heartbeat()
	row, dst, err := e.dwcpMigrate(ctx, src, from, to, mode, false, extra)
	if err != nil {
		return row, nil, err
	}
	if row.Heartbeat, err = e.checkGuest(ctx, src, dst, beforeHB); err != nil {
		dst.Close()
		return row, nil, err
	}
	return row, dst, nil
}

// DWCPSuspended migrates like DWCP with `dwcp migrate --suspend`: the
// destination VM is left loaded and paused, and the source stopped in
// postmigrate, so that both can be inspected (CompareRAM) before anything
// runs. The guest is not checked yet: ResumeSuspended continues the
// destination and checks it as DWCP does.
func (e *Env) DWCPSuspended(ctx context.Context, src *testguest.VM, from, to *wanlab.Host, mode string, extra ...string) (Row, *testguest.VM, error) {
	row, dst, err := e.dwcpMigrate(ctx, src, from, to, mode, true, extra)
	if err != nil {
		return row, nil, err
	}
	for _, c := range []struct {
		vm   *testguest.VM
		want string
	}{{dst, "paused"}, {src, "postmigrate"}} {
		if st, err := c.vm.Status(ctx); err != nil || st != c.want {
			dst.Close()
			return row, nil, fmt.Errorf("after dwcp migrate --suspend: a VM is %q (%v), want %s", st, err, c.want)
		}
	}
	return row, dst, nil
}

// ResumeSuspended continues a destination DWCPSuspended left paused and
// checks the guest (checkGuest) against its source: the heartbeat goes on
// past the source's last one, the checksum is unchanged, no kernel fault.
func (e *Env) ResumeSuspended(ctx context.Context, src, dst *testguest.VM) (string, error) {
	last, _ := src.Heartbeat()
	if _, err := dst.QMP(ctx, "cont", nil); err != nil {
		return "", fmt.Errorf("continue the suspended destination: %w", err)
	}
	return e.checkGuest(ctx, src, dst, last)
}

// dwcpMigrate runs `dwcp migrate` (with --suspend when suspend) and
// attaches to the destination VM.
func (e *Env) dwcpMigrate(ctx context.Context, src *testguest.VM, from, to *wanlab.Host, mode string, suspend bool, extra []string) (Row, *testguest.VM, error) {
	row := Row{Method: "dwcp " + mode, From: from.Name, To: to.Name}
	count0 := e.linkCount(from, to)
	args := append([]string{"migrate", "--qmp", src.QMPPath(),
		"--to", fmt.Sprintf("%s:%d", to.Addr, e.port), "--peer-name", e.nameOf(to), "--name", e.nameOf(from),
		"--certs", e.certs, "--plugin-dir", e.cfg.PluginDir, "--mode", mode, "--json"}, extra...)
	if suspend {
		args = append(args, "--suspend")
	}
	start := time.Now()
	cmd := e.Lab.Command(from, e.cfg.Dwcp, args...)
	cmd.Env = append(os.Environ(), "DWCP_STATE="+filepath.Join(e.dir, e.nameOf(from)+"-state"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Start()
	if err == nil {
		// Ending ctx is an operator's Ctrl-C: dwcp migrate must cancel
		// the migration and leave the VM running on the source.
		stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Signal(os.Interrupt) })
		err = cmd.Wait()
		stop()
	}
	out := stdout.Bytes()
	row.Total = time.Since(start)
	row.count(count0, e.linkCount(from, to))
	if err != nil {
		return row, nil, fmt.Errorf("dwcp migrate: %v\n%s\nserve log:\n%s", err, stderr.String(), e.ServeLog())
	}
	e.logf("dwcp migrate %s->%s: %s", from.Name, to.Name, out)
	var sum dwcpSummary
	if err := json.Unmarshal(out, &sum); err != nil {
		return row, nil, fmt.Errorf("dwcp migrate output %q: %w", out, err)
	}
	if sum.DestinationPaused != suspend {
		return row, nil, fmt.Errorf("dwcp migrate (suspend %v) reported destination_paused %v", suspend, sum.DestinationPaused)
	}
	row.Downtime = time.Duration(sum.DowntimeMs * float64(time.Millisecond))
	row.QEMUDowntime = time.Duration(sum.QEMUDowntimeMs * float64(time.Millisecond))
	row.StreamBytes, row.Passes, row.KnownPages = sum.StreamBytes, sum.Passes, sum.Pages.Known
	// The source's harness monitor was rewritten into the destination's
	// run directory as qmp1.sock; the driver keeps qmp.sock.
	runDir := filepath.Dir(sum.Destination)
	dst, err := testguest.Attach(ctx, filepath.Join(runDir, "qmp1.sock"), sum.Destination, filepath.Join(runDir, "serial.log"))
	if err != nil {
		return row, nil, err
	}
	e.place(dst, to)
	return row, dst, nil
}

// Dir is a scratch directory of the scenario, removed by Close.
func (e *Env) Dir() string { return e.dir }

// checkContinues waits for the destination's heartbeat to move past the
// source's last one (no restart) and returns "N -> M".
func checkContinues(ctx context.Context, dst *testguest.VM, before testguest.Heartbeat) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	hb, err := dst.WaitHeartbeat(ctx, before.N+1)
	if err != nil {
		return "", fmt.Errorf("destination heartbeat after %d: %w", before.N, err)
	}
	return fmt.Sprintf("%d -> %d", before.N, hb.N), nil
}

// Native methods of QEMU's own migration.
var Native = []string{"plain", "multifd-zstd", "xbzrle"}

// QEMU migrates src to a fresh QEMU on host `to` with QEMU's own
// migration over TCP across the lab. Total time runs from starting the
// destination QEMU (DWCP's destination host starts its own inside the
// migration) to the destination running. Downtime is observed from
// outside by polling both QEMUs every 2 ms: from the source leaving
// "running" to the destination reaching "running".
func (e *Env) QEMU(ctx context.Context, src *testguest.VM, to *wanlab.Host, method string) (Row, *testguest.VM, error) {
	from := e.hostOf(src)
	row := Row{Method: "qemu " + method, From: from.Name, To: to.Name}
	cfg := e.cfg.Guest
	cfg.Netns, cfg.Incoming = to.NetNS, "defer"
	// End to end, as for DWCP (whose destination host starts its QEMU
	// inside the migration): the clock includes starting the destination.
	start := time.Now()
	dst, err := testguest.Start(ctx, cfg)
	if err != nil {
		return row, nil, err
	}
	fail := func(err error) (Row, *testguest.VM, error) { dst.Close(); return row, nil, err }
	// Set every capability a method uses explicitly, on and off: the
	// source VM may carry capabilities from its previous migration.
	want := map[string]bool{"xbzrle": method == "xbzrle", "multifd": method == "multifd-zstd"}
	for _, vm := range []*testguest.VM{src, dst} {
		var list []map[string]any
		for c, on := range want {
			list = append(list, map[string]any{"capability": c, "state": on})
		}
		if _, err := vm.QMP(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}); err != nil {
			return fail(err)
		}
		if method == "multifd-zstd" {
			if _, err := vm.QMP(ctx, "migrate-set-parameters", map[string]any{"multifd-compression": "zstd", "multifd-channels": 2}); err != nil {
				return fail(err)
			}
		}
	}
	port := 4444
	uri := fmt.Sprintf("tcp:%s:%d", to.Addr, port)
	if err := dst.MigrateIncoming(ctx, uri); err != nil {
		return fail(err)
	}
	beforeHB, _ := src.Heartbeat()
	count0 := e.linkCount(from, to)
	obs := observeDowntime(ctx, src, dst)
	mi, err := src.Migrate(ctx, uri, testguest.MigrationParams{MaxBandwidth: 10 << 30})
	if err != nil {
		obs.stop()
		return fail(err)
	}
	if err := dst.WaitStatus(ctx, "running"); err != nil {
		obs.stop()
		return fail(fmt.Errorf("destination after native migration: %w", err))
	}
	row.Total = time.Since(start)
	row.Downtime = obs.stop()
	row.count(count0, e.linkCount(from, to))
	row.QEMUDowntime = time.Duration(mi.DowntimeMs) * time.Millisecond
	if mi.RAM != nil {
		row.StreamBytes = uint64(mi.RAM.Transferred)
		row.Passes = uint64(mi.RAM.DirtySyncCount)
	}
	e.place(dst, to)
	if row.Heartbeat, err = e.checkGuest(ctx, src, dst, beforeHB); err != nil {
		return fail(err)
	}
	return row, dst, nil
}

// checkGuest checks the migrated guest: its heartbeat continues past the
// source's last one (no restart) and the checksum of its fixed memory
// region is the one the source reported.
func (e *Env) checkGuest(ctx context.Context, src, dst *testguest.VM, before testguest.Heartbeat) (string, error) {
	hb, err := checkContinues(ctx, dst, before)
	if err != nil {
		return "", err
	}
	want, werr := src.Checksum()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	got, gerr := dst.WaitChecksumFrom(ctx, 0)
	switch {
	case werr != nil || gerr != nil:
		return hb, fmt.Errorf("guest checksum: source %v, destination %v", werr, gerr)
	case got.Sum != want.Sum:
		return hb, fmt.Errorf("guest memory checksum changed across the migration: %s before, %s after", want.Sum, got.Sum)
	}
	if f := dst.KernelFault(); f != "" {
		return hb, fmt.Errorf("the destination guest's kernel reported a fault:\n%s", f)
	}
	return hb + ", sum " + got.Sum[:8] + " unchanged", nil
}

// hostOf is the lab host a VM of this scenario runs on.
func (e *Env) hostOf(vm *testguest.VM) *wanlab.Host {
	e.mu.Lock()
	defer e.mu.Unlock()
	if h, ok := e.where[vm]; ok {
		return h
	}
	if vm.Netns() == e.B.NetNS {
		return e.B
	}
	return e.A
}

func (e *Env) place(vm *testguest.VM, h *wanlab.Host) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.where[vm] = h
}

// downtimeObserver polls two QEMUs' run states.
type downtimeObserver struct {
	cancel context.CancelFunc
	done   chan time.Duration
}

func observeDowntime(ctx context.Context, src, dst *testguest.VM) *downtimeObserver {
	ctx, cancel := context.WithCancel(ctx)
	o := &downtimeObserver{cancel: cancel, done: make(chan time.Duration, 1)}
	go func() {
		var stopped time.Time
		for ctx.Err() == nil {
			if stopped.IsZero() {
				if st, err := src.Status(ctx); err == nil && st != "running" {
					stopped = time.Now()
				}
			} else if st, err := dst.Status(ctx); err == nil && st == "running" {
				o.done <- time.Since(stopped)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		o.done <- 0
	}()
	return o
}

func (o *downtimeObserver) stop() time.Duration {
	select {
	case d := <-o.done:
		o.cancel()
		return d
	case <-time.After(2 * time.Second):
		o.cancel()
		return <-o.done
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
