// Package pluginhost loads the plugins of a plugin directory and keeps them
// running: it verifies the catalog, runs the cheap describe stage and the
// protocol negotiation, launches each plugin, and restarts one that crashed
// on its next use.
//
// It owns plugin processes for the host. It must not pick which codec or
// accelerator a migration uses (the pipeline does) nor touch stream data.
package pluginhost

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/catalog"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/hashicorp/go-hclog"
)

// ErrGaveUp means a plugin crashed more often than Options.MaxRestarts
// allows within RestartWindow; it stays down.
var ErrGaveUp = errors.New("plugin keeps crashing; not restarting it")

// Options configure a Host.
type Options struct {
	// Dir is the plugin directory holding catalog.json.
	Dir    string
	Logger hclog.Logger
	// Stderr receives a copy of every plugin's stderr (optional).
	Stderr io.Writer
	// DisableSharedMemory forces the gRPC data path for every plugin.
	DisableSharedMemory bool
	// MaxRestarts within RestartWindow before a plugin is left down
	// (default 3 per minute).
	MaxRestarts   int
	RestartWindow time.Duration
	// CallTimeout bounds each codec or accelerator call (see
	// plugin.LaunchConfig).
	CallTimeout time.Duration
	// Want, when set, selects the plugins to start (after the describe
	// stage); the others are left stopped, which saves their start-up
	// for commands that do not need them.
	Want func(sdk.Description) bool
}

// Host holds the running plugins of one directory.
type Host struct {
	opts    Options
	logger  hclog.Logger
	plugins map[string]*Plugin
	skipped []Skipped
}

// Skipped is a plugin the host would not or could not run.
type Skipped struct {
	Name   string
	Path   string
	Reason error
}

// Open verifies the directory's catalog and launches every plugin that
// passes. A plugin that is refused, speaks no common protocol version or
// fails to start is skipped with a warning; Open fails only when the
// catalog itself cannot be read.
func Open(ctx context.Context, opts Options) (*Host, error) {
	if opts.Logger == nil {
		opts.Logger = hclog.NewNullLogger()
	}
	if opts.MaxRestarts <= 0 {
		opts.MaxRestarts = 3
	}
	if opts.RestartWindow <= 0 {
		opts.RestartWindow = time.Minute
	}
	cat, err := catalog.Load(opts.Dir)
	if err != nil {
		return nil, err
	}
	h := &Host{opts: opts, logger: opts.Logger, plugins: map[string]*Plugin{}}
	verified, refused := cat.Verify()
	for _, r := range refused {
		h.logger.Warn("refusing plugin", "plugin", r.Name, "path", r.Path, "error", r.Err)
		h.skipped = append(h.skipped, Skipped{Name: r.Name, Path: r.Path, Reason: r.Err})
	}
	// Describe and launch every plugin at once: each costs a process start
	// and a handshake, which add up when done one after the other.
	// An outcome with neither is a plugin not wanted: neither loaded nor
	// reported.
	type outcome struct {
		p   *Plugin
		err error
	}
	results := make([]outcome, len(verified))
	var wg sync.WaitGroup
	for i, v := range verified {
		wg.Add(1)
		go func() {
			defer wg.Done()
			desc, err := plugin.DescribeBinary(ctx, v.Path, v.Sum)
			if err != nil {
				results[i].err = err
				return
			}
			proto, err := plugin.Negotiate(desc.ProtocolVersions, plugin.SupportedProtocols)
			if err != nil {
				results[i].err = fmt.Errorf("plugin %s %s: %w", desc.Name, desc.Version, err)
				return
			}
			if opts.Want != nil && !opts.Want(desc) {
				return
			}
			p := &Plugin{host: h, entry: v, desc: desc, protocol: proto}
			if _, err := p.instance(ctx); err != nil {
				results[i].err = err
				return
			}
			results[i].p = p
		}()
	}
	wg.Wait()
	for i, r := range results {
		switch {
		case r.err != nil:
			h.skip(verified[i], r.err)
		case r.p != nil:
			h.plugins[verified[i].Name] = r.p
		}
	}
	return h, nil
}

func (h *Host) skip(v catalog.Verified, err error) {
	h.logger.Warn("skipping plugin", "plugin", v.Name, "path", v.Path, "error", err)
	h.skipped = append(h.skipped, Skipped{Name: v.Name, Path: v.Path, Reason: err})
}

// Plugins returns the running plugins sorted by name.
func (h *Host) Plugins() []*Plugin {
	out := make([]*Plugin, 0, len(h.plugins))
	for _, p := range h.plugins {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].entry.Name < out[j].entry.Name })
	return out
}

// Skipped returns the plugins that were refused or failed to start.
func (h *Host) Skipped() []Skipped { return append([]Skipped(nil), h.skipped...) }

// Get returns a plugin by catalog name.
func (h *Host) Get(name string) (*Plugin, bool) {
	p, ok := h.plugins[name]
	return p, ok
}

// Codec returns the codec plugin whose algorithm or name is name.
func (h *Host) Codec(name string) (codec.Codec, error) {
	for _, p := range h.Plugins() {
		if p.desc.Kind != sdk.KindCodec {
			continue
		}
		if p.entry.Name == name || p.desc.Name == name {
			return p.Codec()
		}
	}
	return nil, fmt.Errorf("codec plugin %q: %w", name, sdk.ErrNotFound)
}

// Close stops every plugin process.
func (h *Host) Close() error {
	var errs []error
	for _, p := range h.plugins {
		errs = append(errs, p.close())
	}
	return errors.Join(errs...)
}

// Plugin is one cataloged plugin, kept running by the host.
type Plugin struct {
	host     *Host
	entry    catalog.Verified
	desc     sdk.Description
	protocol int

	mu       sync.Mutex
	inst     *plugin.Instance
	codec    codec.Codec
	accel    accel.Accelerator
	hv       hypervisor.Hypervisor
	crashes  []time.Time
	restarts int
	lastErr  error
	// gaveUp is set once the plugin crashed more than MaxRestarts times
	// within RestartWindow: from then on every call returns lastErr
	// instead of launching it again.
	gaveUp bool
}

// Name is the catalog name.
func (p *Plugin) Name() string { return p.entry.Name }

// Description is the plugin's describe output.
func (p *Plugin) Description() sdk.Description { return p.desc }

// Protocol is the negotiated protocol major.
func (p *Plugin) Protocol() int { return p.protocol }

// Path is the verified binary's path.
func (p *Plugin) Path() string { return p.entry.Path }

// SHA256 is the pinned digest in hex.
func (p *Plugin) SHA256() string { return hex.EncodeToString(p.entry.Sum) }

// Restarts counts how often the plugin was restarted after a crash.
func (p *Plugin) Restarts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts
}

// Pid returns the current process id, or 0 when it is not running.
func (p *Plugin) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst == nil || p.inst.Exited() {
		return 0
	}
	return p.inst.Pid()
}

// Fingerprint returns the plugin's current capabilities and health,
// restarting it first if it died.
func (p *Plugin) Fingerprint(ctx context.Context) (plugin.Fingerprint, error) {
	inst, err := p.instance(ctx)
	if err != nil {
		return plugin.Fingerprint{}, err
	}
	return inst.Fingerprint(ctx)
}

// instance returns the running instance, launching a new one when there is
// none or the last one exited.
func (p *Plugin) instance(ctx context.Context) (*plugin.Instance, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst != nil && !p.inst.Exited() {
		return p.inst, nil
	}
	if p.gaveUp {
		return nil, p.lastErr
	}
	if p.inst != nil {
		_ = p.inst.Close()
		p.inst, p.codec, p.accel, p.hv = nil, nil, nil, nil
		now := time.Now()
		recent := p.crashes[:0]
		for _, t := range p.crashes {
			if now.Sub(t) < p.host.opts.RestartWindow {
				recent = append(recent, t)
			}
		}
		p.crashes = append(recent, now)
		if len(p.crashes) > p.host.opts.MaxRestarts {
			p.lastErr = fmt.Errorf("plugin %s: %d crashes within %s: %w", p.entry.Name, len(p.crashes), p.host.opts.RestartWindow, ErrGaveUp)
			p.gaveUp = true
			return nil, p.lastErr
		}
		p.restarts++
		p.host.logger.Warn("restarting crashed plugin", "plugin", p.entry.Name, "restarts", p.restarts)
	}
	logger := p.host.logger.Named(p.entry.Name)
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{
		Path:                p.entry.Path,
		SHA256:              p.entry.Sum,
		Stderr:              p.host.opts.Stderr,
		Logger:              logger,
		DisableSharedMemory: p.host.opts.DisableSharedMemory,
		CallTimeout:         p.host.opts.CallTimeout,
	})
	if err != nil {
		p.lastErr = err
		return nil, err
	}
	if inst.Protocol() != p.protocol {
		_ = inst.Close()
		p.lastErr = fmt.Errorf("plugin %s: handshake chose protocol %d, describe promised %d", p.entry.Name, inst.Protocol(), p.protocol)
		return nil, p.lastErr
	}
	p.inst = inst
	switch p.desc.Kind {
	case sdk.KindCodec:
		p.codec, err = inst.Codec()
	case sdk.KindAccelerator:
		p.accel, err = inst.Accelerator()
	case sdk.KindHypervisor:
		p.hv, err = inst.Hypervisor()
	}
	if err != nil {
		_ = inst.Close()
		p.inst = nil
		p.lastErr = err
		return nil, err
	}
	return inst, nil
}

func (p *Plugin) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inst == nil {
		return nil
	}
	err := p.inst.Close()
	p.inst = nil
	return err
}

// current returns the kind-specific client of the running instance.
func (p *Plugin) current() (codec.Codec, accel.Accelerator, hypervisor.Hypervisor, error) {
	if _, err := p.instance(context.Background()); err != nil {
		return nil, nil, nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.codec, p.accel, p.hv, nil
}

// Codec returns the plugin as a codec that survives restarts: a call that
// meets a crash returns the CrashError (with the plugin's last stderr
// lines); the next call runs on a restarted process.
func (p *Plugin) Codec() (codec.Codec, error) {
	if p.desc.Kind != sdk.KindCodec {
		return nil, fmt.Errorf("plugin %s is a %s, not a codec: %w", p.entry.Name, p.desc.Kind, sdk.ErrUnsupported)
	}
	c, _, _, err := p.current()
	if err != nil {
		return nil, err
	}
	return &restartingCodec{p: p, caps: c.Capabilities()}, nil
}

// Accelerator returns the plugin as an accelerator that survives restarts.
func (p *Plugin) Accelerator() (accel.Accelerator, error) {
	if p.desc.Kind != sdk.KindAccelerator {
		return nil, fmt.Errorf("plugin %s is a %s, not an accelerator: %w", p.entry.Name, p.desc.Kind, sdk.ErrUnsupported)
	}
	_, a, _, err := p.current()
	if err != nil {
		return nil, err
	}
	return &restartingAccel{p: p, caps: a.Capabilities()}, nil
}

// Hypervisor returns the current hypervisor client. Hypervisor calls carry
// migration state, so they are not replayed on a new process: a crash
// surfaces to the caller, who decides (normally: cancel the migration).
func (p *Plugin) Hypervisor() (hypervisor.Hypervisor, error) {
	if p.desc.Kind != sdk.KindHypervisor {
		return nil, fmt.Errorf("plugin %s is a %s, not a hypervisor driver: %w", p.entry.Name, p.desc.Kind, sdk.ErrUnsupported)
	}
	_, _, hv, err := p.current()
	return hv, err
}

var _ codec.Batcher = (*restartingCodec)(nil)

type restartingCodec struct {
	p    *Plugin
	caps codec.Capabilities
}

func (r *restartingCodec) Capabilities() codec.Capabilities { return r.caps }

func (r *restartingCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	c, _, _, err := r.p.current()
	if err != nil {
		return dst, err
	}
	return c.Encode(dst, src, level)
}

func (r *restartingCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	c, _, _, err := r.p.current()
	if err != nil {
		return dst, err
	}
	return c.Decode(dst, src, maxSize)
}

// Lease implements codec.Leaser on the running process's codec, so that
// callers (the pipeline) keep the zero-copy path through the host's
// restarting wrapper. A Buffer belongs to the process it was leased from:
// if that process crashes, the Buffer's calls fail with the CrashError,
// and the next Lease comes from the restarted process. If no process can
// be started, the Buffer is private memory whose calls report why.
func (r *restartingCodec) Lease(size int) codec.Buffer {
	if c, _, _, err := r.p.current(); err == nil {
		if l, ok := c.(codec.Leaser); ok {
			return l.Lease(size)
		}
	}
	return &plainBuffer{c: r, in: make([]byte, 0, max(size, 0))}
}

// LeaseBatch implements codec.Batcher likewise.
func (r *restartingCodec) LeaseBatch(size int) codec.Batch {
	if c, _, _, err := r.p.current(); err == nil {
		if b, ok := c.(codec.Batcher); ok {
			return b.LeaseBatch(size)
		}
	}
	return &plainBatch{c: r, in: make([]byte, 0, max(size, 0))}
}

var errReleased = fmt.Errorf("codec buffer used after Release: %w", sdk.ErrInvalidArgument)

// plainBuffer is a codec.Buffer in private memory over Codec.Encode and
// Decode: what Lease returns when the plugin's own Buffers are out of
// reach. It is not on any hot path.
type plainBuffer struct {
	c        codec.Codec
	in, out  []byte
	released bool
}

func (b *plainBuffer) Input() []byte {
	if b.released {
		return nil
	}
	return b.in[:0]
}

func (b *plainBuffer) Encode(src []byte, level int) (out []byte, err error) {
	if b.released {
		return nil, errReleased
	}
	b.out, err = b.c.Encode(b.out[:0], src, level)
	return b.out, err
}

func (b *plainBuffer) Decode(src []byte, maxSize int) (out []byte, err error) {
	if b.released {
		return nil, errReleased
	}
	b.out, err = b.c.Decode(b.out[:0], src, maxSize)
	return b.out, err
}

func (b *plainBuffer) Release() { b.released, b.in, b.out = true, nil, nil }

// plainBatch is plainBuffer's codec.Batch: each block runs alone at Run.
type plainBatch struct {
	c        codec.Codec
	in       []byte
	blocks   []plainBlock
	ran      bool
	released bool
}

type plainBlock struct {
	decode bool
	arg    int // level or maxSize
	src    []byte
	out    []byte
	err    error
}

func (b *plainBatch) Input() []byte {
	if b.released || b.ran {
		return nil
	}
	return b.in[len(b.in):len(b.in):cap(b.in)]
}

func (b *plainBatch) AddEncode(src []byte, level int) error { return b.add(false, level, src) }

func (b *plainBatch) AddDecode(src []byte, maxSize int) error {
	if maxSize < 0 {
		return fmt.Errorf("codec batch decode: negative maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	return b.add(true, maxSize, src)
}

func (b *plainBatch) add(decode bool, arg int, src []byte) error {
	switch {
	case b.released:
		return errReleased
	case b.ran || len(b.blocks) == codec.MaxBatch:
		return fmt.Errorf("codec batch: run, or holding %d blocks: %w", len(b.blocks), sdk.ErrInvalidArgument)
	}
	if room := b.Input(); len(src) > 0 && len(src) <= cap(room) && &src[0] == &room[:1][0] {
		b.in = b.in[:len(b.in)+len(src)]
	}
	b.blocks = append(b.blocks, plainBlock{decode: decode, arg: arg, src: src})
	return nil
}

func (b *plainBatch) Len() int { return len(b.blocks) }

func (b *plainBatch) Run() error {
	if b.released || b.ran {
		return fmt.Errorf("codec batch: released or run already: %w", sdk.ErrInvalidArgument)
	}
	b.ran = true
	for i := range b.blocks {
		blk := &b.blocks[i]
		if blk.decode {
			blk.out, blk.err = b.c.Decode(nil, blk.src, blk.arg)
		} else {
			blk.out, blk.err = b.c.Encode(nil, blk.src, blk.arg)
		}
		if blk.err != nil {
			blk.out = nil
		}
	}
	return nil
}

func (b *plainBatch) Result(i int) ([]byte, error) {
	if b.released || !b.ran || i < 0 || i >= len(b.blocks) {
		return nil, fmt.Errorf("codec batch result %d: %w", i, sdk.ErrInvalidArgument)
	}
	return b.blocks[i].out, b.blocks[i].err
}

func (b *plainBatch) Reset() {
	if !b.released {
		b.in, b.blocks, b.ran = b.in[:0], b.blocks[:0], false
	}
}

func (b *plainBatch) Release() { b.released, b.in, b.blocks = true, nil, nil }

type restartingAccel struct {
	p    *Plugin
	caps accel.Capabilities
}

func (r *restartingAccel) Capabilities() accel.Capabilities { return r.caps }

func (r *restartingAccel) Run(dst []byte, op accel.Op, arg int64, in []byte) ([]byte, error) {
	_, a, _, err := r.p.current()
	if err != nil {
		return dst, err
	}
	return a.Run(dst, op, arg, in)
}
