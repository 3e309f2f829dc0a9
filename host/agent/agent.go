// Package agent assembles what one DWCP host needs to move streams: its
// plugins (codecs through the plugin host), its certificates, and
// transport sessions to and from peers. The CLI commands (send, serve,
// migrate) are thin layers over it.
//
// It owns wiring and defaults. It must not implement data-path stages
// (pipeline), transport mechanics (transport) or plugin lifecycles
// (pluginhost).
package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/pluginhost"
	"github.com/dwcp/dwcp/host/transport"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/hashicorp/go-hclog"
)

// Config locates a host's plugins and certificates.
type Config struct {
	// PluginDir holds the plugin binaries and catalog.json.
	PluginDir string
	// CertsDir holds ca.pem and NAME.pem / NAME-key.pem.
	CertsDir string
	// Name is this host's name: its certificate's file name and identity.
	Name   string
	Logger hclog.Logger
	// PluginStderr receives a copy of every plugin's stderr (optional).
	PluginStderr io.Writer
	// Kinds limits the plugins started to these kinds (all when empty).
	Kinds []sdk.Kind
	// StateDir keeps per-peer path measurements between sessions (empty:
	// none kept).
	StateDir string
	// OverridesFile holds per-peer and global mode overrides and
	// thresholds (docs/modes.md); a missing file means none.
	OverridesFile string
	// WindowLog, when set, receives every controller window of every
	// session this host sends, one line each (modes.Window.String, after
	// the time and the peer): the trace behind a "receiver-bound" or
	// "cpu-bound" verdict. dwcp sets it from DWCP_WINDOW_LOG.
	WindowLog io.Writer
}

// Agent is an opened host.
type Agent struct {
	cfg      Config
	windowMu sync.Mutex // serializes lines to cfg.WindowLog
	server   *tls.Config
	client   *tls.Config
	logger   hclog.Logger

	// The plugins start in the background (verifying, describing and
	// launching them takes a second or more) while the host connects to
	// its peer and measures the path; ready is closed when they are up.
	ready    chan struct{}
	plugins  *pluginhost.Host
	plugErr  error
	loadTime time.Duration

	// losses holds, per session Dial opened and PlanSession has not
	// planned yet, the kernel TCP counters of its connections.
	losses sync.Map // *transport.Session -> *modes.ConnLoss
}

// Open loads the certificates and starts the plugins in the background;
// the first call that needs a plugin waits for them (and reports their
// failure). ctx bounds the plugins' start only.
func Open(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	a := &Agent{cfg: cfg, logger: cfg.Logger}
	if cfg.CertsDir != "" {
		var err error
		if a.server, a.client, err = certs.LoadTLS(cfg.CertsDir, cfg.Name); err != nil {
			return nil, fmt.Errorf("load certificates for %q from %s: %w (create them with `dwcp certs init` and `dwcp certs issue`)", cfg.Name, cfg.CertsDir, err)
		}
	}
	var want func(sdk.Description) bool
	if len(cfg.Kinds) > 0 {
		want = func(d sdk.Description) bool { return slices.Contains(cfg.Kinds, d.Kind) }
	}
	a.ready = make(chan struct{})
	go func() {
		defer close(a.ready)
		start := time.Now()
		h, err := pluginhost.Open(ctx, pluginhost.Options{Dir: cfg.PluginDir, Logger: cfg.Logger.Named("plugins"), Stderr: cfg.PluginStderr, Want: want})
		a.loadTime = time.Since(start)
		if err != nil {
			a.plugErr = fmt.Errorf("open plugins: %w", err)
			return
		}
		a.plugins = h
	}()
	return a, nil
}

// Plugins waits until the plugins are up and returns them.
func (a *Agent) Plugins() (*pluginhost.Host, error) {
	<-a.ready
	return a.plugins, a.plugErr
}

// PluginsLoadTime is how long the plugins took to start (after Plugins
// has returned).
func (a *Agent) PluginsLoadTime() time.Duration {
	<-a.ready
	return a.loadTime
}

// Close waits for the plugins' start and stops them.
func (a *Agent) Close() error {
	<-a.ready
	if a.plugins == nil {
		return nil
	}
	return a.plugins.Close()
}

// Codecs returns every codec plugin, for the pipeline: numbered 1..n by
// algorithm name (source side), and by algorithm (destination side).
func (a *Agent) Codecs() ([]pipeline.Codec, map[string]codec.Codec, error) {
	h, err := a.Plugins()
	if err != nil {
		return nil, nil, err
	}
	list, byAlgo, _ := SessionCodecs(h, a.logger)
	return list, byAlgo, nil
}

// SessionCodecs numbers the codec plugins of h as a session does: 1..n by
// algorithm name (the first plugin of an algorithm wins). It also returns
// the plugin behind each listed codec. Unusable plugins are logged and
// left out.
func SessionCodecs(h *pluginhost.Host, logger hclog.Logger) ([]pipeline.Codec, map[string]codec.Codec, []*pluginhost.Plugin) {
	byAlgo := map[string]codec.Codec{}
	owner := map[string]*pluginhost.Plugin{}
	for _, p := range h.Plugins() {
		if p.Description().Kind != sdk.KindCodec {
			continue
		}
		c, err := p.Codec()
		if err != nil {
			if logger != nil {
				logger.Warn("codec plugin unusable", "plugin", p.Name(), "error", err)
			}
			continue
		}
		algo := c.Capabilities().Algorithm
		if _, dup := byAlgo[algo]; !dup {
			byAlgo[algo], owner[algo] = c, p
		}
	}
	names := make([]string, 0, len(byAlgo))
	for n := range byAlgo {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > 255 {
		names = names[:255]
	}
	list := make([]pipeline.Codec, 0, len(names))
	plugins := make([]*pluginhost.Plugin, 0, len(names))
	for i, n := range names {
		list = append(list, pipeline.Codec{ID: uint8(i + 1), Algorithm: n, Codec: byAlgo[n]})
		plugins = append(plugins, owner[n])
	}
	return list, byAlgo, plugins
}

// Dial opens a session to a peer's `dwcp serve`.
func (a *Agent) Dial(ctx context.Context, addr, peerName string, streams int, opts transport.Options) (*transport.Session, error) {
	if a.client == nil {
		return nil, fmt.Errorf("no certificates loaded: give --certs")
	}
	// Every connection the session opens (data connections added later
	// and resumes included) is tracked, so that the probe and the
	// controller read the kernel's view of the path: retransmissions (the
	// loss estimate) and ACK-timed RTTs, which a loaded host does not
	// inflate as it does its user-space pings.
	loss := &modes.ConnLoss{}
	sess, err := transport.Dial(ctx, transport.DialConfig{Addr: addr, PeerName: peerName, TLS: a.client, Streams: streams, Options: opts, Dial: loss.WrapDial(nil)})
	if err != nil {
		return nil, err
	}
	a.losses.Store(sess, loss)
	return sess, nil
}

// Listen accepts sessions from peers.
func (a *Agent) Listen(ctx context.Context, addr string, opts transport.Options) (*transport.Listener, error) {
	if a.server == nil {
		return nil, fmt.Errorf("no certificates loaded: give --certs")
	}
	return transport.Listen(ctx, transport.ListenConfig{Addr: addr, TLS: a.server, Options: opts,
		OnHandshakeError: func(remote net.Addr, err error) {
			a.logger.Warn("refused connection", "remote", remote, "error", err)
		}})
}

// Hypervisor returns the hypervisor plugin whose name is name.
func (a *Agent) Hypervisor(name string) (hypervisor.Hypervisor, error) {
	h, err := a.Plugins()
	if err != nil {
		return nil, err
	}
	for _, p := range h.Plugins() {
		d := p.Description()
		if d.Kind == sdk.KindHypervisor && (d.Name == name || p.Name() == name) {
			return p.Hypervisor()
		}
	}
	return nil, fmt.Errorf("hypervisor plugin %q: %w (is it in the plugin directory and pinned?)", name, sdk.ErrNotFound)
}
