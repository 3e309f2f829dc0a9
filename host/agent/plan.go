package agent

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/transport"
)

// SessionPlan is what a source decided for one session.
type SessionPlan struct {
	Probe      modes.ProbeResult
	Settings   modes.Settings
	Codecs     []pipeline.Codec // numbered as the session's batches name them
	Controller *modes.Controller
	Mode       modes.Mode
	Manual     bool
	Why        string

	peer  string
	cache *modes.Cache
}

// Remember stores the path as the session ended up measuring it, for the
// next session to the same peer (its probe then only confirms the RTT).
func (p *SessionPlan) Remember() error {
	if p.cache == nil {
		return nil
	}
	return p.cache.Put(p.peer, p.Controller.Path())
}

// PageStage returns the page stage the plan wants, or nil.
func (p *SessionPlan) PageStage() pipeline.BatchBuilderFactory {
	if !p.Settings.PageStage {
		return nil
	}
	ps := pipeline.DefaultPageStage()
	ps.Options.Disabled = p.Settings.PageDisabled
	return ps
}

// PlanSession measures the path to the peer over sess (the peer's serve
// answers the probe), picks the mode — the user's choice ("auto" for
// none), else the measured path's class — and returns the settings, the
// codecs and the adaptive controller to use as the pipeline's policy. A
// pin (nil for none) fixes the codec and level (modes.PlanConfig.Step). The
// probe runs while the plugins are still starting; only the plan waits
// for them.
func (a *Agent) PlanSession(ctx context.Context, sess *transport.Session, peer, mode string, pin *CodecPin, pinStreams bool) (*SessionPlan, error) {
	var want modes.Mode
	if mode != "" && mode != "auto" {
		m, err := modes.ParseMode(mode)
		if err != nil {
			return nil, err
		}
		want = m
	}
	overrides := modes.Overrides{Thresholds: modes.DefaultThresholds()}
	if a.cfg.OverridesFile != "" {
		o, err := modes.LoadOverrides(a.cfg.OverridesFile)
		if err != nil {
			return nil, err
		}
		overrides = o
	}
	// The probe measures the bandwidth even when the user chose the mode:
	// QEMU's max-bandwidth starts from it (effectiveRate in host/cmd/dwcp).
	pcfg := modes.ProbeConfig{}
	sampler := modes.TransportSampler{Session: sess}
	if v, ok := a.losses.LoadAndDelete(sess); ok {
		loss := v.(*modes.ConnLoss)
		pcfg.Loss, sampler.Loss = loss, loss
	}
	var cache *modes.Cache
	if a.cfg.StateDir != "" {
		c, err := modes.OpenCache(a.cfg.StateDir, 0)
		if err != nil {
			return nil, err
		}
		cache = c
		if p, ok, err := c.Get(peer); err == nil && ok {
			pcfg.Cached = &p
		} else if err != nil {
			a.logger.Warn("path cache unreadable; probing afresh", "error", err)
		}
	}
	probe, err := modes.Probe(ctx, sess, pcfg)
	if err != nil {
		return nil, fmt.Errorf("measure the path to %s: %w", peer, err)
	}
	codecs, _, err := a.Codecs()
	if err != nil {
		return nil, err
	}
	m, manual, why := modes.Resolve(peer, want, overrides, probe.Path)
	var pcfgPlan modes.PlanConfig
	if pin != nil {
		choice, err := PickCodec(codecs, pin.Codec, pin.Level)
		if err != nil {
			return nil, err
		}
		pcfgPlan.Step = &choice
	}
	settings, err := modes.Plan(m, probe.Path, codecs, pcfgPlan)
	if err != nil {
		return nil, err
	}
	ctl, err := modes.NewController(modes.ControllerConfig{
		Settings: settings, Path: probe.Path, Thresholds: overrides.Thresholds, Manual: manual,
		// The count the session is set to have, not the connections up
		// at this instant: a link cut during the probe leaves fewer until
		// the session resumes (a CI run's cutting proxy made a pinned
		// --streams 2 read as 1).
		Streams: sess.Stats().StreamsWanted, Resizer: sess, PinStreams: pinStreams, Sampler: sampler,
		OnWindow: a.windowLogger(peer),
	})
	if err != nil {
		return nil, err
	}
	return &SessionPlan{Probe: probe, Settings: settings, Codecs: codecs, Controller: ctl, Mode: m, Manual: manual, Why: why, peer: peer, cache: cache}, nil
}

// windowLogger returns the controller's window callback that writes to
// Config.WindowLog, or nil when there is none.
func (a *Agent) windowLogger(peer string) func(time.Time, modes.Window) {
	w := a.cfg.WindowLog
	if w == nil {
		return nil
	}
	return func(at time.Time, win modes.Window) {
		a.windowMu.Lock()
		defer a.windowMu.Unlock()
		fmt.Fprintf(w, "%s %s %s\n", at.Format("15:04:05.000"), peer, win)
	}
}

// AnswerProbe runs the destination's half of the path measurement and
// returns a connection that delivers the first non-probe message first.
func AnswerProbe(ctx context.Context, sess *transport.Session) (pipeline.Conn, error) {
	leftover, err := modes.Respond(ctx, sess)
	if err != nil {
		return nil, fmt.Errorf("answer the peer's path probe: %w", err)
	}
	return &prefixConn{Session: sess, first: leftover}, nil
}

type prefixConn struct {
	*transport.Session
	first []byte
}

// RecvBuffer delivers the leftover first; every receive method the
// embedded Session has must go through here, or it would skip it.
func (p *prefixConn) RecvBuffer(ctx context.Context) ([]byte, func(), error) {
	if p.first != nil {
		f := p.first
		p.first = nil
		return f, func() {}, nil
	}
	return p.Session.RecvBuffer(ctx)
}

// Recv is RecvBuffer keeping the buffer (a lent buffer never given back
// is as good as a handed-over one).
func (p *prefixConn) Recv(ctx context.Context) ([]byte, error) {
	msg, _, err := p.RecvBuffer(ctx)
	return msg, err
}

// CodecPin is a codec and level the user fixed for a session (`dwcp
// migrate --codec NAME --level N`): Codec is a codec plugin's algorithm or
// "none" (store), Level -1 the codec's default.
type CodecPin struct {
	Codec string
	Level int
}

// PickCodec resolves a codec name ("none": store the batches) and level
// (-1: the codec's default) against the session's codecs.
func PickCodec(codecs []pipeline.Codec, name string, level int) (pipeline.Choice, error) {
	if name == "none" {
		return pipeline.Choice{}, nil
	}
	var names []string
	for _, c := range codecs {
		if c.Algorithm == name {
			caps := c.Codec.Capabilities()
			if level < 0 {
				level = caps.Levels.Default
			}
			if !caps.Levels.Contains(level) {
				return pipeline.Choice{}, fmt.Errorf("codec %s: level %d outside %d..%d", name, level, caps.Levels.Min, caps.Levels.Max)
			}
			return pipeline.Choice{Codec: c.ID, Level: level}, nil
		}
		names = append(names, c.Algorithm)
	}
	return pipeline.Choice{}, fmt.Errorf("no codec plugin %q (have: %s, none)", name, strings.Join(names, ", "))
}
