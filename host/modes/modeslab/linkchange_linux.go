//go:build linux

package modeslab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Used is when a policy's choice was first used for a batch.
type Used struct {
	Choice pipeline.Choice
	At     time.Time
}

// Recorder is a pipeline.Policy that passes every call to the policy it
// wraps and notes when each new choice was first taken for a batch
// (Chosen) and when the first batch with it was sent (Sent): the moment
// a controller's decision is applied, as the pipeline sees it.
type Recorder struct {
	Policy pipeline.Policy

	mu                 sync.Mutex
	lastChosen         pipeline.Choice
	lastSent           pipeline.Choice
	chosen, sent       []Used
	anyChosen, anySent bool
}

// maxUsed bounds the lists: a flapping policy must not grow them forever.
const maxUsed = 4096

// Choose implements pipeline.Policy.
func (r *Recorder) Choose() pipeline.Choice {
	c := r.Policy.Choose()
	r.mu.Lock()
	if (!r.anyChosen || c != r.lastChosen) && len(r.chosen) < maxUsed {
		r.chosen = append(r.chosen, Used{c, time.Now()})
	}
	r.anyChosen, r.lastChosen = true, c
	r.mu.Unlock()
	return c
}

// Observe implements pipeline.Policy.
func (r *Recorder) Observe(b pipeline.BatchResult) {
	r.mu.Lock()
	if (!r.anySent || b.Choice != r.lastSent) && len(r.sent) < maxUsed {
		r.sent = append(r.sent, Used{b.Choice, time.Now()})
	}
	r.anySent, r.lastSent = true, b.Choice
	r.mu.Unlock()
	r.Policy.Observe(b)
}

// FirstChosen and FirstSent return when c was first chosen (sent) at or
// after t.
func (r *Recorder) FirstChosen(c pipeline.Choice, t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return first(r.chosen, c, t)
}

// FirstSent: see FirstChosen.
func (r *Recorder) FirstSent(c pipeline.Choice, t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return first(r.sent, c, t)
}

func first(l []Used, c pipeline.Choice, t time.Time) (time.Time, bool) {
	for _, u := range l {
		if u.Choice == c && !u.At.Before(t) {
			return u.At, true
		}
	}
	return time.Time{}, false
}

// Adaptive is the controller a session would run (host/agent's
// PlanSession): planned for mode on path, with the pair's transport as its
// sampler (RTT, delivery rate and the TCP counters of its connections),
// sized for Workers() encoders.
func (p *Pair) Adaptive(mode modes.Mode, manual bool, path modes.Path, codecs []pipeline.Codec, t modes.Thresholds, onDecision func(modes.Decision)) (*modes.Controller, modes.Settings, error) {
	settings, err := modes.Plan(mode, path, codecs, modes.PlanConfig{Cores: Workers()})
	if err != nil {
		return nil, settings, fmt.Errorf("plan %v: %w", mode, err)
	}
	ctl, err := modes.NewController(modes.ControllerConfig{
		Settings: settings, Path: path, Thresholds: t, Manual: manual, Workers: Workers(),
		Streams:    p.Src.Stats().Streams,
		Resizer:    p.Src,
		Sampler:    modes.TransportSampler{Session: p.Src, Loss: p.Loss},
		OnDecision: onDecision,
	})
	if err != nil {
		return nil, settings, err
	}
	return ctl, settings, nil
}

// LinkChangeConfig describes a link change in the middle of a transfer.
type LinkChangeConfig struct {
	// Before applies to every direction when the experiment starts; After
	// replaces it ChangeAfter into the transfer. The lab must not run a
	// schedule of its own (a profile with Steps), which would overwrite
	// them.
	Before, After wanlab.LinkParams
	ChangeAfter   time.Duration
	// Watch bounds the wait, after the change, for the controller's first
	// level decision towards the new link to reach the wire and (unless
	// the mode is manual) its first mode decision. The transfer ends when
	// both happened or Watch is over.
	Watch time.Duration
	// Toward is the direction of the level decision awaited: +1 heavier
	// (the change made the link the bottleneck), -1 lighter, 0 any. A
	// decision the other way (made on windows from before the sender felt
	// the change) does not count.
	Toward int
	// WantMode, when set, is the mode awaited: the first mode decision to
	// it counts, not one to a mode on the way (internet to datacenter may
	// pass through hybrid while the link estimate grows).
	WantMode modes.Mode
	// Data is the stream, repeated for as long as the transfer runs.
	Data   []byte
	Codecs []pipeline.Codec
	// Thresholds classify the path (zero: the defaults).
	Thresholds modes.Thresholds
	// Path, when set, replaces the probe (a path known from configuration).
	Path *modes.Path
	// Mode, when set, pins the mode (a manual mode: the controller only
	// picks levels within it); otherwise the path's class is the starting
	// mode and the controller may change it.
	Mode     modes.Mode
	Sessions SessionOptions
}

// LinkChangeResult is what the controller did around the change.
type LinkChangeResult struct {
	Probe     *modes.ProbeResult // nil when the path was given
	Path      modes.Path         // what the controller started with
	Settings  modes.Settings
	StartMode modes.Mode
	StartStep string
	// ChangedAt is when After was applied.
	ChangedAt time.Time
	// ModeChange is the first mode decision after the change (to
	// cfg.WantMode when set), LevelChange the first level decision towards
	// cfg.Toward (nil: none within Watch).
	ModeChange, LevelChange *modes.Decision
	// LevelChosen and LevelSent are when the first batch with
	// LevelChange's choice was chosen and sent (zero: not within Watch).
	LevelChosen, LevelSent time.Time
	Decisions              []modes.Decision
	FinalMode              modes.Mode
	FinalStep              string
	Summary                string // the controller's decision log
	Transfer               TransferResult
}

// LinkChange runs the experiment on lab: a session from h0 to h1, its
// probe (unless cfg.Path), the adaptive controller, and a transfer during
// which the link changes from Before to After.
func LinkChange(ctx context.Context, lab *wanlab.Lab, cfg LinkChangeConfig) (*LinkChangeResult, error) {
	if len(cfg.Data) == 0 || cfg.ChangeAfter <= 0 || cfg.Watch <= 0 {
		return nil, fmt.Errorf("link change: need data, a change time and a watch time")
	}
	if err := lab.SetAll(cfg.Before); err != nil {
		return nil, fmt.Errorf("link change: %w", err)
	}
	p, err := OpenSessions(ctx, lab, cfg.Sessions)
	if err != nil {
		return nil, fmt.Errorf("link change: %w", err)
	}
	defer p.Close()
	res := &LinkChangeResult{}
	if cfg.Path != nil {
		res.Path = *cfg.Path
	} else {
		pr, err := p.Probe(ctx, modes.ProbeConfig{})
		if err != nil {
			return nil, fmt.Errorf("link change: %w", err)
		}
		res.Probe, res.Path = &pr, pr.Path
	}
	mode, manual := cfg.Mode, cfg.Mode != 0
	if !manual {
		mode = modes.Classify(res.Path, cfg.Thresholds)
	}
	decided := make(chan struct{}, 1)
	ctl, settings, err := p.Adaptive(mode, manual, res.Path, cfg.Codecs, cfg.Thresholds, func(modes.Decision) {
		select { // (called on the sender's goroutine: never block)
		case decided <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return nil, fmt.Errorf("link change: %w", err)
	}
	res.Settings, res.StartMode, res.StartStep = settings, mode, ctl.Status().Step
	rec := &Recorder{Policy: ctl}
	in := &loopReader{data: cfg.Data}
	out := &loopCompareWriter{want: cfg.Data}

	var wg sync.WaitGroup
	var tr TransferResult
	var terr error
	transferDone := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(transferDone)
		tr, terr = Transfer(ctx, p, in, out, TransferConfig{Codecs: cfg.Codecs, Policy: rec,
			BatchBytes: settings.BatchBytes, CheckpointBytes: settings.CheckpointBytes})
	}()
	finish := func(err error) (*LinkChangeResult, error) {
		in.stop.Store(true)
		wg.Wait()
		res.Transfer = tr
		res.Decisions = ctl.Decisions()
		st := ctl.Status()
		res.FinalMode, res.FinalStep, res.Summary = st.Mode, st.Step, ctl.Summary()
		return res, errors.Join(err, terr, out.check(in.n.Load()))
	}

	select {
	case <-time.After(cfg.ChangeAfter):
	case <-transferDone:
		return finish(errors.New("link change: the transfer ended before the change"))
	case <-ctx.Done():
		return finish(ctx.Err())
	}
	if err := lab.SetAll(cfg.After); err != nil {
		return finish(fmt.Errorf("link change: %w", err))
	}
	res.ChangedAt = time.Now()
	deadline := time.NewTimer(cfg.Watch)
	defer deadline.Stop()
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	for {
		res.ModeChange, res.LevelChange = nil, nil
		for _, d := range ctl.Decisions() {
			if d.At.Before(res.ChangedAt) {
				continue
			}
			switch {
			case d.Kind == modes.KindMode && res.ModeChange == nil && (cfg.WantMode == 0 || d.To == cfg.WantMode.String()):
				res.ModeChange = &d
			case d.Kind == modes.KindLevel && res.LevelChange == nil && towards(settings.Ladder, d, cfg.Toward):
				res.LevelChange = &d
			}
		}
		if d := res.LevelChange; d != nil {
			res.LevelChosen, _ = rec.FirstChosen(d.Choice, d.At)
			res.LevelSent, _ = rec.FirstSent(d.Choice, d.At)
		}
		if !res.LevelSent.IsZero() && (manual || res.ModeChange != nil) {
			return finish(nil)
		}
		select {
		case <-decided:
		case <-poll.C: // a decision's batch reaching the wire is not signalled
		case <-deadline.C:
			return finish(nil)
		case <-transferDone:
			return finish(nil)
		case <-ctx.Done():
			return finish(ctx.Err())
		}
	}
}

// loopReader repeats data until stopped, then ends the stream.
type loopReader struct {
	data []byte
	stop atomic.Bool
	n    atomic.Int64
}

func (r *loopReader) Read(p []byte) (int, error) {
	if r.stop.Load() {
		return 0, io.EOF
	}
	off := int(r.n.Load() % int64(len(r.data)))
	n := copy(p, r.data[off:])
	r.n.Add(int64(n))
	return n, nil
}

// loopCompareWriter checks a stream of data repeated.
type loopCompareWriter struct {
	want []byte
	n    int64
	err  error
}

func (w *loopCompareWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	for done := 0; done < len(p); {
		off := int(w.n % int64(len(w.want)))
		k := min(len(p)-done, len(w.want)-off)
		if !bytes.Equal(p[done:done+k], w.want[off:off+k]) {
			w.err = fmt.Errorf("link change: delivered bytes differ from the sent ones within [%d, %d)", w.n, w.n+int64(k))
			return done, w.err
		}
		done += k
		w.n += int64(k)
	}
	return len(p), nil
}

func (w *loopCompareWriter) check(sent int64) error {
	if w.err != nil {
		return w.err
	}
	if w.n != sent {
		return fmt.Errorf("link change: %d of %d bytes delivered", w.n, sent)
	}
	return nil
}

// towards reports whether a level decision moved in the direction dir
// (+1 heavier, -1 lighter, 0 either) on the ladder.
func towards(l modes.Ladder, d modes.Decision, dir int) bool {
	from, to := -1, -1
	for i, s := range l {
		if s.Name == d.From {
			from = i
		}
		if s.Name == d.To {
			to = i
		}
	}
	switch {
	case dir > 0:
		return to > from
	case dir < 0:
		return to < from
	}
	return true
}
