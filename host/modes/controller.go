package modes

import (
	"cmp"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dwcp/dwcp/host/pipeline"
)

// Controller defaults (docs/modes.md, "The control loop").
const (
	// defaultHeadroom: a heavier level is taken only if the encoders would
	// still outrun the link by this fraction at that level; priors and
	// scaled estimates are rarely better than that.
	defaultHeadroom = 0.25
	// A decision needs at least this many batches and this much time since
	// the window started (the first batch of the current choice).
	defaultDwellBatches = 8
	defaultDwell        = 250 * time.Millisecond
	// The sender blocked on the transport for at least sendHigh of the
	// window: the link (or the destination behind it) is the bottleneck.
	// At most sendLow: it is not.
	sendHigh = 0.25
	sendLow  = 0.10
	// The encoders were busy at least cpuHigh of their capacity: the CPU is
	// the bottleneck. Below cpuLow (and the link not busy): the source is.
	cpuHigh = 0.80
	cpuLow  = 0.50
	// A lighter step must promise this much more throughput.
	lighterGain = 0.05
	// In source-bound windows a heavier step is taken when it would keep
	// the encoders below this utilisation.
	sourceBoundUtil = 0.5
	// A step that was left for being too slow soon after it was entered is
	// not retried for backoffMin, doubling up to backoffMax, unless the
	// link estimate moves by linkChange.
	backoffMin = 2 * time.Second
	backoffMax = time.Minute
	linkChange = 0.3
	// An observation of a step older than this is replaced by the scaled
	// prior.
	obsMaxAge = 20 * time.Second
	// defaultMaxLog bounds the decision log.
	defaultMaxLog = 1024
	// The path's RTT is the smallest sample of the last rttWindow: queues
	// and a loaded machine only add delay, so the minimum is the path's
	// own. Longer than the classifier's hold, so that one sample of a
	// path that got shorter carries the mode change.
	rttWindow  = 10 * time.Second
	rttSamples = 64
	// A window whose kernel smoothed RTT exceeds the minimum by this
	// factor plus queueSlack has a standing queue at the bottleneck: the
	// flow itself keeps it full, and its retransmissions are its own
	// congestion drops, not the path's loss.
	queueFactor = 1.25
	queueSlack  = time.Millisecond
	// A tie within bestTolerance of the best predicted throughput goes
	// to the heavier step (bytes saved, the smaller jump).
	bestTolerance = 0.03
)

// LinkSample is what a transport reports about the path while data flows.
type LinkSample struct {
	RTT          time.Duration
	DeliveryRate float64 // payload bytes/s the peer consumed
	Counters     TCPCounters
	CountersOK   bool
	// Send is the kernel's account of each data connection's sending
	// (nil: unknown); the controller tells from it whether a window in
	// which the sender blocked was held by the network or by the receiver.
	Send []SendState
}

// StreamResizer changes the number of data connections of a live
// session; *transport.Session is one. SetStreams must not block: the
// transport applies the change in the background, between frames.
type StreamResizer interface {
	SetStreams(n int) error
}

// LinkSampler gives the controller the transport's own view of the path;
// TransportSampler adapts a transport session. Sample must not block.
type LinkSampler interface {
	Sample() LinkSample
}

// ControllerConfig configures NewController.
type ControllerConfig struct {
	// Settings come from Plan: the ladder, the mode's bounds and the start.
	Settings Settings
	// Path is the estimate the session started with (probe or cache).
	Path       Path
	Thresholds Thresholds
	// Manual pins the mode (a user or peer override): no reclassification.
	Manual bool
	// Workers is the pipeline's number of encode workers (default
	// GOMAXPROCS, as the pipeline's).
	Workers int
	// Streams is the number of data connections the session has (default
	// Settings.Streams); stream recommendations are made against it.
	Streams int
	// Resizer, when set, applies the stream decisions to the session: the
	// plan's count at once (when Streams differs), then every change the
	// path calls for. Without it they are recommendations in the log.
	Resizer StreamResizer
	// PinStreams says the user set the number of data connections (dwcp
	// migrate/send --streams N): the controller never changes it, not even
	// to the plan's count, and its streams decisions stay recommendations
	// in the log, marked as pinned. The Resizer is then never called.
	PinStreams bool
	// Sampler, when set, adds the transport's RTT, delivery rate and TCP
	// counters to the passive estimate.
	Sampler LinkSampler
	// Now is the clock (default time.Now); tests drive it.
	Now func() time.Time
	// DwellBatches and Dwell: a decision needs this many batches and this
	// long since the window started (defaults 8 and 250 ms).
	DwellBatches int
	Dwell        time.Duration
	// Headroom: see defaultHeadroom (default 0.25).
	Headroom float64
	// OnDecision, when set, is called with every decision, on the
	// pipeline's sending goroutine: it must not block.
	OnDecision func(Decision)
	// OnWindow, when set, is called with every judged window (a trace for
	// diagnosis: DWCP_WINDOW_LOG in dwcp), on the goroutine that reported
	// the batch and with the controller's lock held: it must be quick.
	OnWindow func(at time.Time, w Window)
	// MaxLog bounds the decisions kept (default 1024; older ones are
	// dropped and counted).
	MaxLog int
}

// DecisionKind says what a decision changed.
type DecisionKind string

// Decision kinds.
const (
	KindLevel   DecisionKind = "level"
	KindMode    DecisionKind = "mode"
	KindStreams DecisionKind = "streams"
)

// Window is what the controller measured over one decision window.
type Window struct {
	// Step is the ladder step in force during the window.
	Step     string
	Batches  int
	Interval time.Duration
	// SendBusy is the fraction of the window the sender blocked on the
	// transport; CPUBusy the fraction of the encoders' capacity used.
	SendBusy, CPUBusy float64
	// StreamRate and WireRate are stream and frame bytes per second;
	// Link is the link estimate after the window (bytes/s, 0 unknown).
	StreamRate, WireRate, Link float64
	Bottleneck                 string // "link", "cpu", "source", "receiver" or "mixed"
	// NetworkShare is the part of the window in which the network alone
	// limited the busiest data connection (SendState.Network; negative:
	// unknown). A sender that blocked while the network limited it for
	// under half of the window was held by the receiver (Bottleneck
	// "receiver"): the link's capacity is not what the window carried.
	NetworkShare float64
	// RTT is the window's RTT sample (see Controller's path estimate);
	// Queued reports a standing queue (kernel SRTT well above its
	// minimum): the window's retransmissions were not counted as loss.
	RTT    time.Duration
	Queued bool
	// Segments and Retransmits are the data connections' TCP segments
	// sent and retransmitted in the window (with a LinkSampler that reads
	// the kernel's counters; 0 otherwise): the trace's view of loss.
	Segments, Retransmits uint64
}

// String is the window on one line, rates in MB/s (10^6 bytes).
func (w Window) String() string {
	return fmt.Sprintf("step %s, %d batches in %v: stream %.1f MB/s, wire %.1f MB/s, sender blocked %.0f%%, encoders %.0f%%, network share %.2f, link %.1f MB/s, rtt %v, retransmitted %d of %d segments: %s",
		w.Step, w.Batches, w.Interval.Round(time.Millisecond), w.StreamRate/1e6, w.WireRate/1e6, w.SendBusy*100, w.CPUBusy*100,
		w.NetworkShare, w.Link/1e6, w.RTT.Round(10*time.Microsecond), w.Retransmits, w.Segments, w.Bottleneck)
}

// Decision is one change the controller made or recommended.
type Decision struct {
	At       time.Time
	Batch    uint64 // batches observed when it was made
	Kind     DecisionKind
	From, To string
	Choice   pipeline.Choice // the choice in force after it
	Mode     Mode            // the mode in force after it
	Streams  int             // streams decisions: the count asked for
	Reason   string
	Window   Window
}

func (d Decision) String() string {
	return fmt.Sprintf("%s batch %d: %s %s -> %s: %s", d.At.Format("15:04:05.000"), d.Batch, d.Kind, d.From, d.To, d.Reason)
}

// Status is a live view of the controller for progress output.
type Status struct {
	Mode   Mode
	Step   string
	Choice pipeline.Choice
	Path   Path // the passive estimate
	// Streams is the number of data connections the path calls for: in
	// use when a Resizer applies it (Applied), else recommended.
	Streams int
	Applied bool
	// Pinned is the count the user set (ControllerConfig.PinStreams; 0:
	// the controller may change it). Streams is then only recommended.
	Pinned     int
	Batches    uint64
	Decisions  int
	Dropped    int // decisions dropped from the bounded log
	LastWindow Window
}

// stepObs is what was observed of one ladder step.
type stepObs struct {
	speed, ratio float64 // stream bytes/s per encoder, stream/wire
	at           time.Time
	ok           bool
	scaleAt      float64 // speedScale when speed was last measured
	// rate is the stream rate the step achieved (EWMA over its windows
	// that were not source-bound), with the link capacity it was achieved
	// on (0 unknown) and when: what a move is checked against.
	rate, rateLink float64
	rateAt         time.Time
}

type rttSample struct {
	at  time.Time
	rtt time.Duration
}

// Controller is the adaptive codec policy: a pipeline.Policy. Choose is
// lock-free; Observe, Decisions and Status take a mutex.
type Controller struct {
	choice atomic.Uint64 // packed pipeline.Choice

	mu       sync.Mutex
	cfg      ControllerConfig
	ladder   Ladder
	lo, hi   int
	pinned   bool // the user fixed the step: lo == hi whatever the mode
	cur      int
	mode     Mode
	class    *Classifier
	workers  float64
	headroom float64
	now      func() time.Time

	// window since the first batch of the current choice
	started                bool
	start                  time.Time
	n                      int
	decoded, wire          int64
	encode, sendWait       time.Duration
	decodedEnc, encodedDur int64 // batches that spent encode time: stream bytes, ns
	// blockStart is when the sender first blocked in this window (zero:
	// it has not); blockWire the wire bytes handed to the transport since,
	// blockWait the time it spent blocked since. While it stays blocked
	// the transport's window is full, so what it takes from then on is
	// what the link drains: the link's rate, even in a window that began
	// before the link slowed down.
	blockStart time.Time
	blockWire  int64
	blockWait  time.Duration
	// steady is the bottleneck of the last window if it ended without a
	// move (so this one runs on the same step); "" otherwise. recent are
	// this window's latest batches, newest last, to see a change of the
	// path without waiting for the window's older part to be outweighed.
	steady string
	recent []recentBatch

	obs                    []stepObs
	speedScale, ratioScale float64
	scaled                 bool // speedScale was measured
	// excess is how many more wire bytes the sender handed the transport
	// than the link's capacity carries, since the last saturated window;
	// window is what the transport buffers (Settings.WindowBytes).
	excess, window float64
	ceilingRTT     time.Duration // the path's RTT when ceiling was measured
	// ceiling is the link's measured capacity (wire bytes/s): from the
	// probe, then from windows in which the link was saturated; 0 once an
	// unsaturated window carried more (the capacity is then unknown, and
	// only known to be above floor, the last window's wire rate).
	ceiling, floor float64
	lowRuns        int // saturated windows in a row under half the ceiling
	// fatLink: the mode's lightest step was cpu-bound below a link whose
	// capacity is unknown (see the classification in observe).
	fatLink bool
	// hostBound: the last window was cpu-bound on a link whose capacity
	// is unknown, so the passive bandwidth is only what this host sent.
	hostBound bool
	// sendPrev is the data connections' SendState at sendAt, the end of
	// the window before.
	sendPrev                 []SendState
	sendAt                   time.Time
	linkAtBackoff            float64
	backoffUntil, backoffFor []time.Duration
	epoch                    time.Time // origin of backoffUntil
	lastMove                 struct {
		at       time.Time
		from, to int
	}

	counters0  TCPCounters
	countersOK bool
	// winCounters: the counters at the last window's end, for the
	// window's own segment and retransmission counts (Window.Segments).
	winCounters   TCPCounters
	winCountersOK bool
	lossWire      float64       // wire bytes sent since counters0
	kernelMin     time.Duration // the kernel's MinRTT at the last reading
	rtts          []rttSample   // the last rttWindow's samples, oldest first
	path          Path
	streams       int
	recStreams    int
	recSince      time.Time
	batches       uint64
	last          Window
	log           []Decision
	dropped       int
}

func packChoice(c pipeline.Choice) uint64 {
	return uint64(c.Codec)<<32 | uint64(uint32(int32(c.Level)))
}

func unpackChoice(v uint64) pipeline.Choice {
	return pipeline.Choice{Codec: uint8(v >> 32), Level: int(int32(uint32(v)))}
}

// NewController builds a controller from Plan's settings.
func NewController(cfg ControllerConfig) (*Controller, error) {
	s := cfg.Settings
	if len(s.Ladder) == 0 {
		return nil, fmt.Errorf("new controller: settings have no ladder (use Plan): %w", ErrBadConfig)
	}
	if !s.Mode.Valid() || s.MinStep < 0 || s.MaxStep >= len(s.Ladder) || s.MinStep > s.MaxStep {
		return nil, fmt.Errorf("new controller: mode %v with steps %d..%d of %d: %w", s.Mode, s.MinStep, s.MaxStep, len(s.Ladder), ErrBadConfig)
	}
	cur := s.Ladder.Index(s.Start)
	if cur < 0 {
		return nil, fmt.Errorf("new controller: start %+v is not on the ladder: %w", s.Start, ErrBadConfig)
	}
	if err := cfg.Path.Validate(); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	t := cfg.Thresholds.WithDefaults()
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("new controller: %w", err)
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.PinStreams && cfg.Streams <= 0 {
		return nil, fmt.Errorf("new controller: PinStreams needs Streams, the count the user set: %w", ErrBadConfig)
	}
	if cfg.Streams <= 0 {
		cfg.Streams = max(s.Streams, 1)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DwellBatches <= 0 {
		cfg.DwellBatches = defaultDwellBatches
	}
	if cfg.Dwell <= 0 {
		cfg.Dwell = defaultDwell
	}
	if !(cfg.Headroom > 0) {
		cfg.Headroom = defaultHeadroom
	}
	if cfg.MaxLog <= 0 {
		cfg.MaxLog = defaultMaxLog
	}
	c := &Controller{
		cfg: cfg, ladder: s.Ladder, lo: s.MinStep, hi: s.MaxStep, pinned: s.Pinned, cur: cur, mode: s.Mode,
		class:   NewClassifierAt(t, s.Mode),
		workers: float64(cfg.Workers), headroom: cfg.Headroom, now: cfg.Now,
		obs:        make([]stepObs, len(s.Ladder)),
		speedScale: 1, ratioScale: 1,
		ceiling:      cfg.Path.Bandwidth,
		window:       float64(cmp.Or(s.WindowBytes, 16<<20)),
		ceilingRTT:   cfg.Path.RTT,
		recent:       make([]recentBatch, 0, min(2*cfg.DwellBatches, maxRecent)),
		backoffUntil: make([]time.Duration, len(s.Ladder)),
		backoffFor:   make([]time.Duration, len(s.Ladder)),
		epoch:        cfg.Now(),
		path:         cfg.Path,
		streams:      cfg.Streams,
		recStreams:   cfg.Streams,
	}
	c.cur = min(max(c.cur, c.lo), c.hi)
	c.choice.Store(packChoice(c.ladder[c.cur].Choice))
	if cfg.Sampler != nil {
		ls := cfg.Sampler.Sample()
		c.counters0, c.countersOK = ls.Counters, ls.CountersOK
		c.winCounters, c.winCountersOK = ls.Counters, ls.CountersOK
		// The first window is judged by the kernel's send state too: it
		// is the one most often held by the receiver (a destination still
		// starting its QEMU, decoders warming up), and counted as the
		// link's it set a 4 Gbit/s path's capacity to 747 Mbit/s.
		if ls.Send != nil {
			c.sendPrev, c.sendAt = ls.Send, time.Now()
		}
	}
	if (cfg.Resizer != nil || cfg.PinStreams) && s.Streams > 0 && s.Streams != c.streams {
		// The session was opened before the path was measured; the plan
		// knows better now (pinned: the log says what it would have been).
		c.setStreams(c.epoch, s.Streams, fmt.Sprintf("planned for path %v", cfg.Path), Window{})
	}
	return c, nil
}

// Choose implements pipeline.Policy.
func (c *Controller) Choose() pipeline.Choice { return unpackChoice(c.choice.Load()) }

// Observe implements pipeline.Policy.
func (c *Controller) Observe(r pipeline.BatchResult) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.batches++
	if !c.started {
		// Batches chosen before the last change are still arriving; the
		// window opens with the first one of the current choice.
		if r.Choice == c.ladder[c.cur].Choice {
			c.started, c.start = true, now
			c.resetSums()
		}
		return
	}
	c.n++
	c.decoded += int64(r.Decoded)
	c.wire += int64(r.Wire)
	c.encode += r.Encode
	c.sendWait += r.SendWait
	if r.Encode > 0 && r.Choice == c.ladder[c.cur].Choice {
		c.decodedEnc += int64(r.Decoded)
		c.encodedDur += int64(r.Encode)
	}
	c.noteBlocked(now, r)
	if len(c.recent) == cap(c.recent) {
		copy(c.recent, c.recent[1:])
		c.recent = c.recent[:len(c.recent)-1]
	}
	c.recent = append(c.recent, recentBatch{at: now, r: r})
	if c.n >= c.cfg.DwellBatches && now.Sub(c.start) >= c.cfg.Dwell {
		c.evaluate(now)
		return
	}
	if c.steady != "" && c.restartOnChange(now) {
		c.evaluate(now)
	}
}

// maxRecent bounds the batches a window keeps for restartOnChange (a
// dwell of more batches than half of it never restarts early).
const maxRecent = 64

// recentBatch is one observed batch and when it was observed.
type recentBatch struct {
	at time.Time
	r  pipeline.BatchResult
}

// blockedWait is the time in Send that counts as blocked on the
// transport's window (copying a batch into it takes well under this);
// heldBlocked the fraction of the time since the first such wait that the
// sender must have stayed blocked for the link to be measured from it.
const (
	blockedWait = time.Millisecond
	heldBlocked = 0.8
)

// Early windows: a window on the same step as the last one may be
// restarted from its latest batches, over half the dwell time, when they
// show beyond doubt that the encoders became the bottleneck where the link
// was not: the path got faster under a steady setting, and every batch
// spent on the old, heavier step costs time the encoders do not have. A
// window right after a move always runs its full dwell, so a move cannot
// be undone early. The other way (the link became the bottleneck) is not
// hurried: the sender only blocks once the transport's window is full, and
// on a loaded machine a short run of blocked sends is as often a stall of
// the receiver or of TLS as a slower link (a 4 Gbit/s lab link read as
// 260-670 Mbit/s in 64 ms windows).
const (
	clearCPU  = 0.9  // encoders at least this busy ...
	clearIdle = 0.05 // ... with the sender blocked at most this
)

// restartOnChange looks at the latest batches of a window on a steady
// step that was not cpu-bound: at least half the dwell's batches, over at
// least half its time. If the encoders were the bottleneck in all of them,
// the window is restarted from them (the older part measured the old path)
// and evaluated at once.
func (c *Controller) restartOnChange(now time.Time) bool {
	if c.steady == "cpu" {
		return false
	}
	// recent holds this window's batches only (resetSums empties it); the
	// suffix is recent[k:], and it starts when recent[k-1] was observed.
	need := max(c.cfg.DwellBatches/2, 1)
	k := len(c.recent) - need
	for ; k >= 1; k-- {
		if now.Sub(c.recent[k-1].at) >= c.cfg.Dwell/2 {
			break
		}
	}
	if k < 1 {
		return false
	}
	from := c.recent[k-1].at
	sec := now.Sub(from).Seconds()
	var send, enc time.Duration
	for _, b := range c.recent[k:] {
		send += b.r.SendWait
		enc += b.r.Encode
	}
	if send.Seconds()/sec > clearIdle || enc.Seconds()/(c.workers*sec) < clearCPU {
		return false
	}
	suffix := c.recent[k:] // stays valid: resetSums only shortens recent
	c.start = from
	c.resetSums()
	for _, b := range suffix {
		r := b.r
		c.n++
		c.decoded += int64(r.Decoded)
		c.wire += int64(r.Wire)
		c.encode += r.Encode
		c.sendWait += r.SendWait
		if r.Encode > 0 {
			c.decodedEnc += int64(r.Decoded)
			c.encodedDur += int64(r.Encode)
		}
		c.noteBlocked(b.at, r)
	}
	return true
}

// noteBlocked follows the sender's blocking through the window.
func (c *Controller) noteBlocked(at time.Time, r pipeline.BatchResult) {
	if c.blockStart.IsZero() && r.SendWait >= blockedWait {
		c.blockStart = at.Add(-r.SendWait)
	}
	if !c.blockStart.IsZero() {
		c.blockWire += int64(r.Wire)
		c.blockWait += r.SendWait
	}
}

func (c *Controller) resetSums() {
	c.n, c.decoded, c.wire, c.encode, c.sendWait, c.decodedEnc, c.encodedDur = 0, 0, 0, 0, 0, 0, 0
	c.blockStart, c.blockWire, c.blockWait = time.Time{}, 0, 0
	c.recent = c.recent[:0]
}

// ewma blends a sample into an average (alpha: the sample's weight).
func ewma(avg, sample, alpha float64) float64 {
	if avg <= 0 {
		return sample
	}
	return avg + alpha*(sample-avg)
}

// evaluate closes a window: it updates the estimates and may change the
// level, the mode or the stream recommendation.
func (c *Controller) evaluate(now time.Time) {
	iv := now.Sub(c.start)
	sec := iv.Seconds()
	w := Window{
		Step: c.ladder[c.cur].Name, Batches: c.n, Interval: iv,
		SendBusy:   c.sendWait.Seconds() / sec,
		CPUBusy:    c.encode.Seconds() / (c.workers * sec),
		StreamRate: float64(c.decoded) / sec,
		WireRate:   float64(c.wire) / sec,
	}
	cur := c.cur
	// What the current step did, and how far it is from its prior: the
	// same factors (this machine's load, this guest's data, the page
	// stage's savings) apply to the other steps.
	if c.encodedDur > 0 && c.decodedEnc > 0 {
		sp := float64(c.decodedEnc) / time.Duration(c.encodedDur).Seconds()
		c.obs[cur].speed = ewma(c.obs[cur].speed, sp, 0.5)
		if c.ladder[cur].Speed < storeSpeed {
			// The first measurement replaces the prior's scale (1 is no
			// measurement): the model must be calibrated on the first
			// window for a jump to the step it predicts best.
			if c.scaled {
				c.speedScale = ewma(c.speedScale, sp/c.ladder[cur].Speed, 0.3)
			} else {
				c.speedScale, c.scaled = sp/c.ladder[cur].Speed, true
			}
		}
		c.obs[cur].scaleAt = c.speedScale
	}
	if c.wire > 0 && c.decoded > 0 {
		ra := float64(c.decoded) / float64(c.wire)
		c.obs[cur].ratio = ewma(c.obs[cur].ratio, ra, 0.5)
		c.ratioScale = ewma(c.ratioScale, ra/c.ladder[cur].Ratio, 0.3)
		c.obs[cur].ok, c.obs[cur].at = true, now
	}

	// The link: a saturated window measures it; an unsaturated one only
	// proves it is at least as fast as what went through.
	var ls LinkSample
	if c.cfg.Sampler != nil {
		ls = c.cfg.Sampler.Sample()
	}
	saturated := w.SendBusy >= sendHigh
	w.NetworkShare = -1
	if ls.Send != nil {
		if c.sendPrev != nil && now.Sub(c.sendAt) >= minJudgedSpan {
			w.NetworkShare = float64(networkTime(c.sendPrev, ls.Send)) / float64(now.Sub(c.sendAt))
		}
		c.sendPrev, c.sendAt = ls.Send, now
	}
	// A sender blocked on the transport while its connections mostly had
	// nothing queued, or waited on the peer's receive window, was held by
	// the receiving host (on a loaded machine, a receiver starved of CPU):
	// the window says nothing of the link's capacity, only that it
	// carries at least this much. (Counted as the link's, such windows
	// left a 2.56 Gbit/s path cached at 499 Mbit/s.)
	receiverHeld := saturated && w.NetworkShare >= 0 && w.NetworkShare < hostBoundShare
	if receiverHeld {
		saturated = false
	}
	c.floor = w.WireRate
	if saturated {
		link := w.WireRate
		// A window that ran unblocked for a while before the sender
		// blocked and then stayed blocked straddles a slowdown of the
		// link: what the transport took from the first wait on is the
		// new link's rate, which the window's own rate overstates. (After
		// a stall of the receiver the sender catches up without waiting;
		// on a loaded machine stalls of 50-100 ms are common.)
		bl := now.Sub(c.blockStart)
		if !c.blockStart.IsZero() && c.blockStart.Sub(c.start) >= iv/4 && bl >= iv/4 &&
			c.blockWait.Seconds() >= heldBlocked*bl.Seconds() {
			link = math.Min(link, float64(c.blockWire)/bl.Seconds())
		}
		switch {
		case c.ceiling > 0 && link > 2*c.ceiling:
			// A saturated link at more than twice what was known: another
			// link. The average would take several windows to get there.
			c.ceiling, c.lowRuns = link, 0
		case c.ceiling > 0 && link < c.ceiling/2:
			// Under half: another link too, or TCP still ramping up (a
			// new session, a longer path) or a stall. The second such
			// window in a row settles it.
			c.lowRuns++
			if c.lowRuns >= 2 {
				c.ceiling, c.lowRuns = link, 0
			} else {
				c.ceiling = ewma(c.ceiling, link, 0.5)
			}
		default:
			c.ceiling, c.lowRuns = ewma(c.ceiling, link, 0.5), 0
		}
		c.excess = 0
	} else {
		c.lowRuns = 0
		delivered := math.Min(ls.DeliveryRate, maxBandwidth)
		c.floor = math.Max(c.floor, delivered)
		if c.ceiling > 0 {
			// More than the capacity went out: the link got faster, or
			// the transport's window is filling (after a move to a
			// lighter step it takes up to WindowBytes before the sender
			// blocks). Only what the peer acknowledged, or an excess the
			// window cannot hold, proves the former. So does a window
			// that follows a saturated one on the same step without ever
			// blocking: the transport's window was full when it began and
			// had no room to take the excess.
			c.excess = math.Max(c.excess+float64(c.wire)-c.ceiling*sec, 0)
			wasFull := c.steady == "link" && w.SendBusy <= sendLow
			if delivered > c.ceiling*1.1 || c.floor > c.ceiling*1.1 && (c.excess > c.window || wasFull) {
				c.ceiling, c.excess = 0, 0
			}
		}
	}
	w.Link = c.linkEstimate()
	if c.linkAtBackoff > 0 && w.Link > 0 && w.Link < (1-linkChange)*c.linkAtBackoff {
		// The link got slower: a step that was too slow for the old one
		// may keep up with this one. (On a faster link it would fall
		// further behind; on a path that alternates, clearing on every
		// change made the controller retry it in every thin phase.)
		clear(c.backoffUntil)
		c.linkAtBackoff = 0
	}
	if ls.CountersOK {
		if c.winCountersOK && ls.Counters.SegmentsSent >= c.winCounters.SegmentsSent && ls.Counters.Retransmitted >= c.winCounters.Retransmitted {
			w.Segments = ls.Counters.SegmentsSent - c.winCounters.SegmentsSent
			w.Retransmits = ls.Counters.Retransmitted - c.winCounters.Retransmitted
		}
		c.winCounters, c.winCountersOK = ls.Counters, true
	}
	w.RTT, w.Queued = c.updatePath(now, ls)
	if rtt := c.path.RTT; saturated {
		c.ceilingRTT = rtt // the capacity was just measured on this path
	} else if c.ceiling > 0 && c.ceilingRTT > 0 && rtt > 0 && (2*rtt < c.ceilingRTT || rtt > 2*c.ceilingRTT) {
		// The path's RTT halved or doubled since its capacity was
		// measured: another route, and what was known of the old one's
		// capacity says nothing of it. Without this, a step that was
		// cpu-bound just under the old capacity never learns that the
		// new path is faster (nothing it sends can show it).
		c.ceiling, c.excess, c.ceilingRTT = 0, 0, 0
		w.Link = c.linkEstimate()
	}

	cpuBound := w.CPUBusy >= cpuHigh && w.SendBusy <= sendLow
	sourceBound := w.CPUBusy < cpuLow && w.SendBusy <= sendLow
	switch {
	case cpuBound:
		w.Bottleneck = "cpu"
	case saturated:
		w.Bottleneck = "link"
	case receiverHeld:
		w.Bottleneck = "receiver"
	case sourceBound:
		w.Bottleneck = "source"
	default:
		w.Bottleneck = "mixed"
	}
	c.last = w
	if c.cfg.OnWindow != nil {
		c.cfg.OnWindow(now, w)
	}

	// What the step achieved (unless the source held it back): every
	// move is checked against it.
	if !sourceBound && w.StreamRate > 0 {
		o := &c.obs[cur]
		if c.freshRate(cur, now, c.ceiling) {
			o.rate = ewma(o.rate, w.StreamRate, 0.5)
		} else {
			o.rate = w.StreamRate
		}
		o.rateLink, o.rateAt = c.ceiling, now
	}

	next, reason := cur, ""
	switch {
	case cpuBound && cur > c.lo:
		// Straight to the step the calibrated model predicts best at the
		// link's capacity. A link never seen saturated is only known to
		// carry what it did: assume it takes twice that (as TCP's slow
		// start probes), the only way to learn more.
		link := c.ceiling
		if link <= 0 {
			link = 2 * c.floor
		}
		if !(link > 0) {
			link = math.Inf(1)
		}
		cand := c.bestStep(c.lo, cur-1, link)
		tCur := throughput(c.speed(cur), c.ratio(cur), c.workers, link)
		tCand := throughput(c.speed(cand), c.ratio(cand), c.workers, link)
		if tCand > tCur*(1+lighterGain) {
			next = cand
			reason = fmt.Sprintf("cpu-bound: encoders %.0f%% busy, sender blocked %.0f%%; %s would carry %s of stream against %s (link %s)",
				w.CPUBusy*100, w.SendBusy*100, c.ladder[cand].Name, FormatRate(tCand), FormatRate(tCur), linkText(c.ceiling, c.floor))
		}
	case saturated && cur < c.hi && !c.backedOff(cur+1, now):
		// Compress harder while the codec still outruns the link: the
		// heaviest step (short of one backed off) whose encoders would
		// still produce the headroom over what the link takes. Heavier
		// steps are slower and compress better, so the steps that pass
		// are a run from cur+1.
		cand, cpu, need := -1, 0.0, 0.0
		for j := cur + 1; j <= c.hi && !c.backedOff(j, now); j++ {
			cj, nj := c.speed(j)*c.workers, c.ceiling*c.ratio(j)
			if cj < (1+c.headroom)*nj {
				break
			}
			cand, cpu, need = j, cj, nj
		}
		tCur := throughput(c.speed(cur), c.ratio(cur), c.workers, c.ceiling)
		tUp := throughput(c.speed(cur+1), c.ratio(cur+1), c.workers, c.ceiling)
		switch {
		case cand > cur:
			next = cand
			reason = fmt.Sprintf("link-bound: sender blocked %.0f%% at %s; %s encoders would still produce %s of stream against the %s the link takes",
				w.SendBusy*100, FormatRate(c.ceiling), c.ladder[cand].Name, FormatRate(cpu), FormatRate(need))
		case c.observed(cur+1, now) && tUp > tCur*(1+lighterGain):
			// A step left for being cpu-bound while the link's capacity
			// was unknown, now that the link has shown what it carries.
			next = cur + 1
			reason = fmt.Sprintf("link-bound: sender blocked %.0f%% at %s; %s, as measured, carries %s of stream against %s here",
				w.SendBusy*100, FormatRate(c.ceiling), c.ladder[next].Name, FormatRate(tUp), FormatRate(tCur))
		}
	case sourceBound && c.mode != Datacenter && cur < c.hi && !c.backedOff(cur+1, now):
		// Bytes saved at no cost in time: the heaviest step that keeps
		// the encoders at most half busy.
		util := 0.0
		for j := cur + 1; j <= c.hi && !c.backedOff(j, now); j++ {
			u := w.StreamRate / (c.speed(j) * c.workers)
			if u > sourceBoundUtil {
				break
			}
			next, util = j, u
		}
		if next != cur {
			reason = fmt.Sprintf("source-bound (encoders %.0f%%, sender %.0f%% busy): %s would use %.0f%% of the encoders and save bytes",
				w.CPUBusy*100, w.SendBusy*100, c.ladder[next].Name, util*100)
		}
	}
	if next != cur && !sourceBound && c.freshRate(next, now, c.ceiling) && c.obs[cur].rate > 0 &&
		c.obs[next].rate < c.obs[cur].rate*(1+lighterGain) {
		// The model says move, but the step was measured on this link
		// (within linkChange) and carried less stream than this one does:
		// stay. This is what ends a see-saw between two steps whose
		// windows read cpu-bound at one and link-bound at the other.
		next = cur
	}
	if next != cur {
		if next < cur && c.lastMove.to == cur && c.lastMove.from < cur && now.Sub(c.lastMove.at) < 4*time.Duration(c.cfg.DwellBatches)*c.cfg.Dwell {
			// Entered from below and left again quickly: the heavier step
			// does not fit this path; do not retry it at once.
			d := c.backoffFor[cur]
			d = min(max(2*d, backoffMin), backoffMax)
			c.backoffFor[cur] = d
			c.backoffUntil[cur] = now.Sub(c.epoch) + d
			c.linkAtBackoff = c.linkEstimate()
			reason += fmt.Sprintf(" (%s not retried for %v)", c.ladder[cur].Name, d)
		}
		c.move(now, next, reason, w)
	}

	// Whatever the step: a cpu-bound window on a link never seen saturated
	// measured this host, not the link (Path.HostBound). In datacenter
	// mode at s2:1 the 4 Gbit/s lab link read 750 Mbit/s this way;
	// classified as a bandwidth, it moved the session to hybrid and cached
	// the path as hybrid.
	c.hostBound = c.ceiling <= 0 && !saturated && w.CPUBusy >= cpuLow
	if !c.cfg.Manual {
		pc := c.path
		switch {
		case saturated || c.ceiling > 0:
			// The link showed a capacity: it is not beyond this host.
			c.fatLink = false
		case w.CPUBusy >= cpuLow && cur == c.lo && c.floor >= c.class.t.InternetMaxBandwidth:
			// The mode's lightest step cannot fill the link (the encoders,
			// not the link or the source, hold it back): its capacity
			// is unknown, only above what this host can send. For the mode
			// that is a fat link (no setting of this mode can use it; the
			// datacenter's, with storing, could). On this 2-core machine
			// s2:1 carries ~0.9 Gbit/s of wire: a 4 Gbit/s path seen from
			// internet or hybrid mode never showed the 1.25 Gbit/s the
			// classifier wants. The passive path keeps the lower bound.
			// It sticks until a window shows the link's capacity: windows
			// between that read mixed or source-bound on a loaded machine
			// would otherwise reset the classifier's hold (a switch took
			// 9.4 s at load 6-7).
			c.fatLink = true
		}
		if c.fatLink {
			pc.Bandwidth = maxBandwidth
		}
		pc.HostBound = c.hostBound
		if m, changed := c.class.Update(pc, now); changed {
			c.setMode(now, m, w)
		}
	}
	c.recommend(now, w)
	if c.cur == cur {
		// A new window starts here; after a change (a level decision or
		// a mode's bounds) it starts with the first batch of the new
		// choice.
		c.start = now
		c.resetSums()
		c.steady = w.Bottleneck
	} else {
		c.steady = ""
	}
}

// freshRate reports whether step i's achieved rate is recent and was
// measured while the link's capacity was known and within linkChange of
// link (a capacity, 0 unknown). Rates achieved on links of unknown
// capacity are not compared: the link may have changed in between.
func (c *Controller) freshRate(i int, now time.Time, link float64) bool {
	o := c.obs[i]
	if o.rate <= 0 || now.Sub(o.rateAt) >= obsMaxAge || o.rateLink <= 0 || link <= 0 {
		return false
	}
	return math.Abs(link-o.rateLink) <= linkChange*o.rateLink
}

// bestStep is the step of lo..hi with the highest predicted throughput on
// a link of the given rate, the heaviest within bestTolerance of it.
func (c *Controller) bestStep(lo, hi int, link float64) int {
	top := 0.0
	for i := lo; i <= hi; i++ {
		top = math.Max(top, throughput(c.speed(i), c.ratio(i), c.workers, link))
	}
	pick := lo
	for i := lo; i <= hi; i++ {
		if throughput(c.speed(i), c.ratio(i), c.workers, link) >= top*(1-bestTolerance) {
			pick = i
		}
	}
	return pick
}

// observed reports whether step i has a fresh observation.
func (c *Controller) observed(i int, now time.Time) bool {
	o := c.obs[i]
	return o.ok && o.speed > 0 && now.Sub(o.at) < obsMaxAge
}

// speed and ratio are the best guesses for a step: its own recent
// observation, else its prior scaled like the current step's.
//
// A stale speed observation still says how the step compares with the
// others on this machine and this data (a codec that suffers more than
// the rest from a competing process): it is scaled by how the current
// step's speed moved since, rather than dropped for the prior. Dropping
// it made the controller retry a step that did not fit every obsMaxAge.
func (c *Controller) speed(i int) float64 {
	o := c.obs[i]
	switch {
	case o.ok && o.speed > 0 && c.now().Sub(o.at) < obsMaxAge:
		return o.speed
	case c.ladder[i].Speed >= storeSpeed:
		return storeSpeed
	case o.ok && o.speed > 0 && o.scaleAt > 0:
		return o.speed * c.speedScale / o.scaleAt
	}
	return c.ladder[i].Speed * c.speedScale
}

func (c *Controller) ratio(i int) float64 {
	if o := c.obs[i]; o.ok && o.ratio > 0 && c.now().Sub(o.at) < obsMaxAge {
		return o.ratio
	}
	return math.Max(c.ladder[i].Ratio*c.ratioScale, 1e-3)
}

// linkEstimate is the best single number for the link: its measured
// capacity, else the most it was seen to carry.
func (c *Controller) linkEstimate() float64 {
	if c.ceiling > 0 {
		return c.ceiling
	}
	return c.floor
}

func linkText(ceiling, floor float64) string {
	if ceiling > 0 {
		return FormatRate(ceiling)
	}
	return "above " + FormatRate(floor)
}

func (c *Controller) backedOff(i int, now time.Time) bool {
	return now.Sub(c.epoch) < c.backoffUntil[i]
}

func (c *Controller) move(now time.Time, next int, reason string, w Window) {
	from := c.ladder[c.cur].Name
	c.lastMove.at, c.lastMove.from, c.lastMove.to = now, c.cur, next
	c.cur = next
	c.choice.Store(packChoice(c.ladder[next].Choice))
	c.started = false
	c.resetSums()
	c.record(Decision{At: now, Batch: c.batches, Kind: KindLevel, From: from, To: c.ladder[next].Name,
		Choice: c.ladder[next].Choice, Mode: c.mode, Reason: reason, Window: w})
}

func (c *Controller) setMode(now time.Time, m Mode, w Window) {
	from := c.mode
	c.mode = m
	if !c.pinned {
		c.lo, c.hi = c.ladder.Bounds(m)
	}
	c.record(Decision{At: now, Batch: c.batches, Kind: KindMode, From: from.String(), To: m.String(),
		Choice: c.ladder[c.cur].Choice, Mode: m, Reason: fmt.Sprintf("path now %v", c.path), Window: w})
	if c.cur < c.lo || c.cur > c.hi {
		c.move(now, min(max(c.cur, c.lo), c.hi), fmt.Sprintf("outside the %v mode's steps %s..%s", m, c.ladder[c.lo].Name, c.ladder[c.hi].Name), w)
	}
}

// updatePath refreshes the passive estimate and returns the window's RTT
// sample and whether the window had a standing queue.
//
// RTT: the smallest sample of the last rttWindow. A sample is the
// smallest of the transport's smoothed ping RTT, the kernel's smoothed
// RTT of the data connections and, when it fell since the last reading,
// the kernel's minimum RTT (the path got shorter: a sample of this
// window). The transport's RTT alone reads a 0.5 ms link at 19-40 ms
// under load (queueing, a busy machine replying late), and its minimum
// never forgets a longer path that preceded.
//
// Loss: retransmissions count only in windows without a standing queue.
// A flow that keeps the bottleneck's queue full (kernel SRTT above
// queueFactor times its minimum plus queueSlack) loses packets to its own
// congestion, and the bandwidth estimate already says what the path
// delivers; random loss on the path comes without a queue (a thin lossy
// path never fills one), and that is what the loss threshold is about.
func (c *Controller) updatePath(now time.Time, ls LinkSample) (time.Duration, bool) {
	p := c.path
	p.When, p.Source = now, "passive"
	// The probe's judgement of the hosts does not carry over to the
	// passive windows, which judge them by their own rules.
	p.HostBound = false
	if l := c.linkEstimate(); l > 0 {
		p.Bandwidth = math.Min(l, maxBandwidth)
	}
	r := ls.RTT
	queued := false
	if ls.CountersOK {
		k := ls.Counters
		r = minPositive(r, k.SRTT)
		if k.MinRTT > 0 {
			if c.kernelMin <= 0 || k.MinRTT < c.kernelMin {
				r = minPositive(r, k.MinRTT)
			}
			c.kernelMin = k.MinRTT
		}
		queued = k.SRTT > 0 && k.MinRTT > 0 && k.SRTT > time.Duration(queueFactor*float64(k.MinRTT))+queueSlack
	}
	if r > 0 {
		// Drop samples older than the window (and the oldest beyond the
		// cap), then add this one.
		k := 0
		for k < len(c.rtts) && (now.Sub(c.rtts[k].at) > rttWindow || len(c.rtts)-k >= rttSamples) {
			k++
		}
		c.rtts = append(c.rtts[:0], c.rtts[k:]...)
		c.rtts = append(c.rtts, rttSample{now, r})
		m := r
		for _, s := range c.rtts {
			m = min(m, s.rtt)
		}
		p.RTT = m
	}
	c.lossWire += float64(c.wire)
	switch {
	case !ls.CountersOK:
	case !c.countersOK:
		c.counters0, c.countersOK, c.lossWire = ls.Counters, true, 0
	case queued || ls.Counters.SegmentsSent < c.counters0.SegmentsSent || ls.Counters.Retransmitted < c.counters0.Retransmitted:
		// Our own congestion drops (or counters that went back: another
		// set of connections): start counting again from here.
		c.counters0, c.lossWire = ls.Counters, 0
	case ls.Counters.SegmentsSent >= c.counters0.SegmentsSent+minLossSegments:
		ds := ls.Counters.SegmentsSent - c.counters0.SegmentsSent
		loss := math.Min(float64(ls.Counters.Retransmitted-c.counters0.Retransmitted)/float64(ds), 1)
		if loss > 0 && p.RTT > 0 && c.lossWire > 0 {
			// Loss is the path's when it limits what TCP carries: the
			// session's connections at this RTT, loss and segment size
			// (Mathis et al.) must fall short of the datacenter bar.
			// Otherwise it is TCP probing a fat path (the lab's 0.5 ms,
			// 64000-byte-frame link read 1 % that way; those connections
			// could carry GB/s each at that rate).
			seg := c.lossWire / float64(ds)
			if mathis := float64(c.streams) * seg * 1.22 / (p.RTT.Seconds() * math.Sqrt(loss)); mathis >= c.class.t.DatacenterMinBandwidth {
				loss = 0
			}
		}
		p.Loss = loss
		c.counters0, c.lossWire = ls.Counters, 0
	}
	c.path = p
	return r, queued
}

// recommend updates the stream count the path calls for, and applies it
// with a Resizer. Like the mode, it has hysteresis: a new count must
// differ from the current one by at least two connections and a quarter,
// for the classifier's hold time. Connections are cheap to add but each
// new one starts in TCP's slow start, so small changes are not worth it.
func (c *Controller) recommend(now time.Time, w Window) {
	lim, maxStreams := c.cfg.Settings.Limits, c.cfg.Settings.MaxStreams
	if lim == (SocketLimits{}) {
		lim = ReadSocketLimitsCached()
	}
	if maxStreams <= 0 {
		maxStreams = 16
	}
	rec := recommendStreams(c.mode, c.path, lim, int(c.workers), maxStreams)
	if d := abs(rec - c.recStreams); d < 2 || 4*d < c.recStreams {
		c.recSince = time.Time{}
		return
	}
	if c.recSince.IsZero() {
		c.recSince = now
	}
	if now.Sub(c.recSince) < c.class.t.Hold {
		return
	}
	c.recSince = time.Time{}
	c.setStreams(now, rec, fmt.Sprintf("path %v calls for %d", c.path, rec), w)
}

// setStreams records a streams decision and, with a Resizer, applies it.
func (c *Controller) setStreams(now time.Time, n int, why string, w Window) {
	old := c.recStreams
	c.recStreams = n
	reason := fmt.Sprintf("session has %d data connections; %s", c.streams, why)
	switch {
	case c.cfg.PinStreams:
		reason += fmt.Sprintf(" (a recommendation: the user pinned %d)", c.streams)
	case c.cfg.Resizer == nil:
		reason += " (a recommendation: nothing applies it)"
	default:
		if err := c.cfg.Resizer.SetStreams(n); err != nil {
			reason += fmt.Sprintf("; not applied: %v", err)
		} else {
			c.streams = n
		}
	}
	c.record(Decision{At: now, Batch: c.batches, Kind: KindStreams, From: fmt.Sprint(old), To: fmt.Sprint(n),
		Choice: c.ladder[c.cur].Choice, Mode: c.mode, Streams: n, Reason: reason, Window: w})
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

var (
	limitsOnce sync.Once
	limits     SocketLimits
)

// ReadSocketLimitsCached reads the kernel's limits once per process.
func ReadSocketLimitsCached() SocketLimits {
	limitsOnce.Do(func() { limits = ReadSocketLimits() })
	return limits
}

func (c *Controller) record(d Decision) {
	if len(c.log) >= c.cfg.MaxLog {
		n := copy(c.log, c.log[1:])
		c.log = c.log[:n]
		c.dropped++
	}
	c.log = append(c.log, d)
	if c.cfg.OnDecision != nil {
		c.cfg.OnDecision(d)
	}
}

// Decisions returns a copy of the decision log, oldest first.
func (c *Controller) Decisions() []Decision {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Decision(nil), c.log...)
}

// Status returns a live view for progress output.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	pinned := 0
	if c.cfg.PinStreams {
		pinned = c.streams
	}
	return Status{
		Mode: c.mode, Step: c.ladder[c.cur].Name, Choice: c.ladder[c.cur].Choice, Path: c.path,
		Streams: c.recStreams, Applied: c.cfg.Resizer != nil && !c.cfg.PinStreams && c.streams == c.recStreams,
		Batches: c.batches, Decisions: len(c.log) + c.dropped, Dropped: c.dropped, LastWindow: c.last,
		Pinned: pinned,
	}
}

// Path returns the passive estimate of the path, to store in a Cache when
// the session ends. It is host-bound when the mode's lightest step could
// not fill the link: its bandwidth is then only what this host could send.
func (c *Controller) Path() Path {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.path
	p.HostBound = c.fatLink || c.hostBound
	return p
}

// Summary is the decision log as text for a migration's final report.
func (c *Controller) Summary() string {
	st := c.Status()
	var b strings.Builder
	streams := fmt.Sprintf("%d streams recommended", st.Streams)
	switch {
	case st.Pinned > 0:
		streams = fmt.Sprintf("%d streams pinned by the user (%d recommended)", st.Pinned, st.Streams)
	case st.Applied:
		streams = fmt.Sprintf("%d streams", st.Streams)
	}
	fmt.Fprintf(&b, "mode %v, final level %s, %s, %d batches, path %v\n", st.Mode, st.Step, streams, st.Batches, st.Path)
	if st.Dropped > 0 {
		fmt.Fprintf(&b, "(%d older decisions dropped)\n", st.Dropped)
	}
	for _, d := range c.Decisions() {
		b.WriteString(d.String())
		b.WriteByte('\n')
	}
	return b.String()
}
