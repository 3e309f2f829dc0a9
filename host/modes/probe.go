package modes

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"
)

// Conn is the ordered, reliable message connection a probe runs on: a
// transport session (before the pipeline starts on it) or any framing of
// a byte stream.
type Conn interface {
	Send(ctx context.Context, msg []byte) error
	Recv(ctx context.Context) ([]byte, error)
}

// TCPCounters are a sender's TCP segment counters, summed over its
// connections, counted from when each left TCP's initial slow start (see
// ConnLoss).
type TCPCounters struct {
	SegmentsSent  uint64 // data segments sent, retransmissions included
	Retransmitted uint64 // segments retransmitted
	// SRTT and MinRTT are the kernel's smoothed and minimum RTT, the
	// smallest over the connections (0: unknown). They come from ACKs in
	// the kernel, so unlike a user-space ping they do not include the
	// time a loaded machine takes to schedule the peer's reply. MinRTT is
	// a minimum over minutes (tcp_min_rtt_wlen): it follows a path that
	// got shorter at once, one that got longer not at all.
	SRTT, MinRTT time.Duration
}

// LossSource reports TCP counters of the connections a probe's burst
// travels on; the probe turns their growth during the burst into a loss
// estimate. ConnLoss is one for net.Conns.
type LossSource interface {
	TCPCounters() (TCPCounters, error)
}

// ProbeConfig tunes Probe. The zero value uses the defaults.
type ProbeConfig struct {
	// Pings is the number of ping/pong exchanges, sent back to back; the
	// RTT is the smallest (default 5).
	Pings int
	// MessageSize is the size of one burst message (default 32 KiB).
	MessageSize int
	// FirstRound is the bytes of the first burst round (default 128 KiB);
	// each following round is four times larger.
	FirstRound int
	// MaxBytes bounds all rounds together (default 16 MiB) and MaxTime
	// their duration (default 1 s): a round is only started when the
	// estimate so far says it fits.
	MaxBytes int
	MaxTime  time.Duration
	// Loss, when set, gives the loss estimate.
	Loss LossSource
	// Cached is an earlier measurement of this path (from a Cache). When
	// the pings agree with its RTT within CacheTolerance (default 0.5, i.e.
	// 50 %), the probe keeps its bandwidth and loss and sends no burst.
	Cached         *Path
	CacheTolerance float64
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c ProbeConfig) withDefaults() ProbeConfig {
	if c.Pings <= 0 {
		c.Pings = 5
	}
	if c.MessageSize <= 0 {
		c.MessageSize = 32 << 10
	}
	c.MessageSize = min(max(c.MessageSize, minBurstMessageSize), MaxBurstMessageSize)
	if c.FirstRound <= 0 {
		c.FirstRound = 128 << 10
	}
	// A round needs a few messages to have a spacing at all.
	c.FirstRound = max(c.FirstRound, 4*c.MessageSize)
	if c.MaxBytes <= 0 {
		c.MaxBytes = 16 << 20
	}
	if c.MaxTime <= 0 {
		c.MaxTime = time.Second
	}
	if c.CacheTolerance <= 0 {
		c.CacheTolerance = 0.5
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Round is one burst round as the responder saw it.
type Round struct {
	Bytes    int           // bytes sent in the round
	Messages int           // messages sent
	Span     time.Duration // first to last arrival
	Rate     float64       // bytes/s after the first message over Span
	// EnvelopeRate follows the lower envelope of the arrivals (0 with
	// fewer than eight messages): the round's estimate.
	EnvelopeRate float64
	// With a SendStateSource (ProbeConfig.Loss), the kernel's view of
	// the round at the sender:
	//   - KernelRate follows the lower envelope of the bytes the peer's
	//     kernel acknowledged, polled while the round was in flight (0:
	//     too few polls). It is not delayed by a receiving application
	//     that reads late, as the arrival times are.
	//   - AckSpan is the time from the first to the last acknowledgement
	//     of the round's bytes.
	//   - NetworkTime is the sending time that only the network limited,
	//     on the connection with the most of it (SendState.Network).
	//   - HostBound: the round was long enough to judge and NetworkTime is
	//     under half of it, so the hosts, not the link, set its pace.
	KernelRate   float64
	AckSpan      time.Duration
	NetworkTime  time.Duration
	NetworkKnown bool
	HostBound    bool
}

// ProbeResult is what Probe measured.
type ProbeResult struct {
	Path      Path
	RTTs      []time.Duration
	Rounds    []Round
	LossKnown bool
	// FromCache: the pings confirmed ProbeConfig.Cached, no burst was sent.
	FromCache bool
	// KernelRTT: the RTT is the kernel's minimum for the session's
	// connections (ProbeConfig.Loss), smaller than the pings'.
	KernelRTT bool
	Elapsed   time.Duration
}

// minLossSegments is the fewest steady-state segments a loss estimate is
// made from.
const minLossSegments = 1000

// minJudgedSpan is the shortest arrival span a round is judged in: host-
// bound or not (the kernel's send times have jiffy resolution, 4 ms), and
// converged with the round before.
const minJudgedSpan = 20 * time.Millisecond

// hostBoundShare: a round whose network-limited sending time is under this
// share of its arrival span was paced by the hosts. A link-bound round keeps
// the sender's queue full for the whole span (and one RTT more); a host that
// cannot produce the bytes fast enough leaves it empty, and a receiver that
// cannot consume them stalls it on the receive window.
const hostBoundShare = 0.5

// minSpan is the shortest arrival span a rate is computed over: below it
// the receiver's scheduling, not the path, sets the spacing.
const minSpan = 200 * time.Microsecond

// Probe measures the path to the peer running Respond on the other end of
// c: the RTT (the fastest of back-to-back ping/pong exchanges), the bottleneck bandwidth
// (receiver-timed bursts of growing size, within MaxBytes and MaxTime) and,
// with a LossSource, the loss rate during the bursts. It ends the exchange
// with a done message, after which c carries whatever comes next.
func Probe(ctx context.Context, c Conn, cfg ProbeConfig) (ProbeResult, error) {
	cfg = cfg.withDefaults()
	start := cfg.Now()
	var res ProbeResult
	if err := probe(ctx, c, cfg, &res); err != nil {
		sendProbeError(ctx, c, err)
		return res, err
	}
	if err := c.Send(ctx, appendHeader(nil, msgDone)); err != nil {
		return res, fmt.Errorf("probe: send done: %w", err)
	}
	res.Elapsed = cfg.Now().Sub(start)
	res.Path.When = cfg.Now()
	return res, nil
}

func probe(ctx context.Context, c Conn, cfg ProbeConfig, res *ProbeResult) error {
	// RTT: the pings go out back to back and the pongs are timed as they
	// come, so the measurement costs one round trip, not one per ping
	// (five round trips were 300 ms of every session's setup at 60 ms).
	// The responder answers in order; a pong waits behind the ones before
	// it only for their serialization (a few bytes each).
	var out []byte
	sentAt := make([]time.Time, cfg.Pings)
	for i := range cfg.Pings {
		sentAt[i] = cfg.Now()
		out = appendPing(out[:0], msgPing, uint32(i))
		if err := c.Send(ctx, out); err != nil {
			return fmt.Errorf("probe: send ping %d: %w", i, err)
		}
	}
	for i := range cfg.Pings {
		m, err := recvProbe(ctx, c, nil)
		if err != nil {
			return fmt.Errorf("probe: wait for pong %d: %w", i, err)
		}
		if m.typ != msgPong || m.seq != uint32(i) {
			return fmt.Errorf("probe: got %s (seq %d) for ping %d: %w", probeName(m.typ), m.seq, i, ErrProbeProtocol)
		}
		res.RTTs = append(res.RTTs, cfg.Now().Sub(sentAt[i]))
	}
	sorted := slices.Clone(res.RTTs)
	slices.Sort(sorted)
	// The smallest sample: back to back, a later pong also waits for the
	// responder to answer the ones before it, and a busy host only ever
	// adds delay (the median of pipelined pings read 3.5 ms on the lab's
	// 0.5 ms link on a loaded machine).
	res.Path.RTT = sorted[0]
	res.Path.Source = "probe"
	if cfg.Loss != nil {
		// The kernel's minimum RTT of the same connections comes from
		// ACKs timed in the kernel: a host too busy to answer a ping at
		// once does not inflate it (pings read 4.6 ms on the lab's
		// 0.5 ms link at load 8, the kernel 0.56 ms). It can only be
		// smaller than the pings' when they were delayed.
		if k, err := cfg.Loss.TCPCounters(); err == nil && k.MinRTT > 0 && k.MinRTT < res.Path.RTT {
			res.Path.RTT = k.MinRTT
			res.KernelRTT = true
		}
	}

	if cp := cfg.Cached; cp != nil && cp.Validate() == nil && cp.Bandwidth > 0 {
		// The smallest sample: a busy host only ever adds delay.
		lo, hi := float64(cp.RTT)*(1-cfg.CacheTolerance), float64(cp.RTT)*(1+cfg.CacheTolerance)
		if r := float64(res.Path.RTT); r >= lo && r <= hi {
			res.Path.Bandwidth, res.Path.Loss, res.Path.HostBound = cp.Bandwidth, cp.Loss, cp.HostBound
			res.Path.Source = "cache"
			res.FromCache = true
			return nil
		}
	}

	states, _ := cfg.Loss.(SendStateSource)
	var before TCPCounters
	lossOK := false
	if cfg.Loss != nil {
		var err error
		before, err = cfg.Loss.TCPCounters()
		lossOK = err == nil
	}

	// Bandwidth: rounds of growing size.
	t0 := cfg.Now()
	msg := make([]byte, cfg.MessageSize)
	var samples []sample
	sent, size := 0, cfg.FirstRound
	est, last := 0.0, 0.0
	for round := uint32(0); sent < cfg.MaxBytes && round < 16; round++ {
		size = min(size, cfg.MaxBytes-sent)
		if est > 0 {
			left := cfg.MaxTime - cfg.Now().Sub(t0) - res.Path.RTT
			fit := int(est * left.Seconds() * 0.8)
			size = min(size, fit)
		}
		count := min(size/cfg.MessageSize, MaxBurstMessages)
		if count < 4 || (round > 0 && cfg.Now().Sub(t0) >= cfg.MaxTime) {
			break
		}
		if n := len(res.Rounds); n > 0 && count*cfg.MessageSize < res.Rounds[n-1].Bytes {
			// A round smaller than the last says less than it did, and a
			// small one can say too much: a shaper's burst allowance lets
			// it through faster than the link's rate (a last round of 160
			// KiB, squeezed into the time left, read 287 Mbit/s on the
			// lab's 100 Mbit/s link).
			break
		}
		var acks *ackPoller
		if states != nil {
			acks = startAckPoller(states)
		}
		r, err := burst(ctx, c, round, count, msg, &samples)
		if acks != nil {
			acks.stop(&r)
		}
		if err != nil {
			return err
		}
		if lossOK {
			// Reading between rounds lets the source see each
			// connection leave slow start (ConnLoss).
			_, _ = cfg.Loss.TCPCounters()
		}
		sent += r.Bytes
		res.Rounds = append(res.Rounds, r)
		// Each round is four times longer than the one before and runs on
		// connections whose congestion windows the earlier ones opened:
		// the latest rounds are the best measurements. The larger of the
		// last two rides out one round spoilt by a busy host.
		// The kernel's acknowledgements time the link itself; the arrivals
		// also time the receiving application, which on a busy host reads
		// later than the bytes came.
		e := max(roundEstimate(r), r.KernelRate)
		if e <= 0 {
			size *= 4
			continue
		}
		prev := last
		last = e
		est = math.Max(e, prev)
		// Converged: two rounds agree, the later one long enough to be
		// judged. (With 5 ms, a loaded host stretched the first two rounds
		// of 128 and 512 KiB alike and stopped the probe at 435 Mbit/s on
		// the lab's 4 Gbit/s link.)
		if prev > 0 && r.Span >= minJudgedSpan && math.Abs(e-prev) <= 0.1*prev {
			break
		}
		size *= 4
	}
	if est == 0 {
		// Every round arrived faster than the clock can resolve: an
		// in-memory path. Report the rate of the bytes over the spans.
		var bytes int
		var span time.Duration
		for _, r := range res.Rounds {
			bytes += r.Bytes
			span += r.Span
		}
		est = float64(bytes) / math.Max(span.Seconds(), 1e-6)
	}
	res.Path.Bandwidth = math.Min(est, maxBandwidth)
	// The last round is the largest and the best judged.
	if n := len(res.Rounds); n > 0 {
		res.Path.HostBound = res.Rounds[n-1].HostBound
	}

	if lossOK {
		after, err := cfg.Loss.TCPCounters()
		// Fewer steady-state segments than minLossSegments say nothing
		// about a rate near the 0.5 % threshold (five expected events).
		if err == nil && after.SegmentsSent >= before.SegmentsSent+minLossSegments && after.Retransmitted >= before.Retransmitted {
			d := float64(after.SegmentsSent - before.SegmentsSent)
			res.Path.Loss = math.Min(float64(after.Retransmitted-before.Retransmitted)/d, 1)
			res.LossKnown = true
		}
	}
	return nil
}

// ackPollInterval is how often an ackPoller reads the kernel's counters.
const ackPollInterval = time.Millisecond

// ackPoller reads a SendStateSource while one burst round is in flight:
// the acknowledged bytes over time, and the send states at both ends.
// Each reading is a true point of the acknowledgement curve however late
// it is taken; a busy host only samples it more sparsely.
type ackPoller struct {
	src    SendStateSource
	done   chan struct{}
	exited chan struct{}
	t0     time.Time
	first  []SendState
	last   []SendState
	points []sample // at: ns since t0; bytes: acknowledged since the last point
}

func startAckPoller(src SendStateSource) *ackPoller {
	p := &ackPoller{src: src, done: make(chan struct{}), exited: make(chan struct{}), t0: time.Now()}
	first, err := src.SendStates()
	if err != nil {
		close(p.exited)
		return p
	}
	p.first = first
	base := ackedSum(first)
	go func() {
		defer close(p.exited)
		tick := time.NewTicker(ackPollInterval)
		defer tick.Stop()
		prev := base
		p.points = append(p.points, sample{})
		read := func() bool {
			st, err := src.SendStates()
			if err != nil {
				return false
			}
			p.last = st
			if a := ackedSum(st); a > prev {
				p.points = append(p.points, sample{at: uint64(time.Since(p.t0)), bytes: uint32(min(a-prev, math.MaxUint32))})
				prev = a
			} else {
				// Keep the latest time nothing moved: the curve starts
				// at the last reading before the first acknowledgement.
				if len(p.points) == 1 {
					p.points[0].at = uint64(time.Since(p.t0))
				}
			}
			return true
		}
		for {
			select {
			case <-p.done:
				read()
				return
			case <-tick.C:
				if !read() {
					return
				}
			}
		}
	}()
	return p
}

// stop ends the polling and fills r's kernel fields.
func (p *ackPoller) stop(r *Round) {
	select {
	case <-p.exited:
	default:
		close(p.done)
		<-p.exited
	}
	if p.first == nil || p.last == nil {
		return
	}
	r.NetworkTime, r.NetworkKnown = networkTime(p.first, p.last), true
	if n := len(p.points); n >= 2 {
		r.AckSpan = time.Duration(p.points[n-1].at - p.points[0].at)
		r.KernelRate = trainRates(p.points).EnvelopeRate
	}
	judged := max(r.AckSpan, r.Span)
	r.HostBound = judged >= minJudgedSpan && float64(r.NetworkTime) < hostBoundShare*float64(judged)
}

func ackedSum(st []SendState) uint64 {
	var a uint64
	for _, s := range st {
		a += s.Acked
	}
	return a
}

// networkTime is the largest growth of network-limited sending time of a
// connection between two readings. The largest, not the sum: a round
// spread over several connections keeps each of them busy while the link
// limits it.
func networkTime(before, after []SendState) time.Duration {
	var most time.Duration
	for i := range min(len(before), len(after)) {
		most = max(most, after[i].Network()-before[i].Network())
	}
	return most
}

// burst sends one round and reads the responder's report.
func burst(ctx context.Context, c Conn, round uint32, count int, msg []byte, samples *[]sample) (Round, error) {
	if err := c.Send(ctx, appendBurstStart(nil, round, uint32(count), uint32(len(msg)))); err != nil {
		return Round{}, fmt.Errorf("probe: send burst %d start: %w", round, err)
	}
	for i := range count {
		fillBurstData(msg, round, uint32(i))
		if err := c.Send(ctx, msg); err != nil {
			return Round{}, fmt.Errorf("probe: send burst %d message %d: %w", round, i, err)
		}
	}
	if err := c.Send(ctx, appendBurstEnd(nil, round, uint32(count))); err != nil {
		return Round{}, fmt.Errorf("probe: send burst %d end: %w", round, err)
	}
	m, err := recvProbe(ctx, c, *samples)
	if err != nil {
		return Round{}, fmt.Errorf("probe: wait for burst %d report: %w", round, err)
	}
	if m.typ != msgReport || m.round != round || len(m.samples) != count {
		return Round{}, fmt.Errorf("probe: got %s for round %d with %d samples, want the report of round %d with %d: %w",
			probeName(m.typ), m.round, len(m.samples), round, count, ErrProbeProtocol)
	}
	*samples = m.samples
	r := trainRates(m.samples)
	r.Messages = count
	r.Bytes = count * len(msg)
	return r, nil
}

// trainRates turns the arrival times of a train of messages into rates:
// over all of it after the first message (Rate), and along the lower
// envelope of the arrivals (EnvelopeRate), the round's estimate.
//
// Arrival times can only be late, never early: a stalled receiver (or a
// user-space link on a busy machine) delivers a backlog at once after a
// pause. So the points (bytes so far, arrival time) lie on or above the
// line of the bottleneck's rate, and the lower convex hull of the points
// follows that line through any stall; its slope around the middle of the
// train, over at least half of the bytes, is the estimate. TCP's slow
// start makes the head of a train arrive slower, which the hull turns into
// the chord of the whole train (an underestimate); the rounds after the
// first run on an open congestion window and do not have it.
func trainRates(s []sample) Round {
	var r Round
	if len(s) < 2 {
		return r
	}
	last := s[len(s)-1]
	r.Span = time.Duration(last.at - s[0].at)
	var total uint64
	for _, x := range s[1:] {
		total += uint64(x.bytes)
	}
	if r.Span >= minSpan {
		r.Rate = float64(total) / r.Span.Seconds()
	}
	if len(s) < 8 {
		return r
	}
	// Points: cumulative bytes after the first message, arrival time.
	type pt struct{ b, t float64 }
	pts := make([]pt, 0, len(s))
	acc := uint64(0)
	for i, x := range s {
		if i > 0 {
			acc += uint64(x.bytes)
		}
		pts = append(pts, pt{float64(acc), float64(x.at)})
	}
	// Lower hull (monotone chain): keep turning left.
	hull := make([]pt, 0, len(pts))
	for _, p := range pts {
		for len(hull) >= 2 {
			a, b := hull[len(hull)-2], hull[len(hull)-1]
			if (b.b-a.b)*(p.t-a.t)-(b.t-a.t)*(p.b-a.b) > 0 {
				break
			}
			hull = hull[:len(hull)-1]
		}
		hull = append(hull, p)
	}
	if len(hull) < 2 {
		return r
	}
	// The hull's slope around the middle, over at least half of the
	// bytes and minSpan of time.
	lo, hi := hull[0].b, hull[len(hull)-1].b
	mid := (lo + hi) / 2
	k := 0
	for k+2 < len(hull) && hull[k+1].b <= mid {
		k++
	}
	i, j := k, k+1
	for (hull[j].b-hull[i].b < (hi-lo)/2 || hull[j].t-hull[i].t < float64(minSpan)) && (i > 0 || j < len(hull)-1) {
		if i > 0 {
			i--
		}
		if j < len(hull)-1 {
			j++
		}
	}
	if dt := hull[j].t - hull[i].t; dt >= float64(minSpan) {
		r.EnvelopeRate = (hull[j].b - hull[i].b) / (dt / 1e9)
	}
	return r
}

func roundEstimate(r Round) float64 {
	if r.EnvelopeRate > 0 {
		return r.EnvelopeRate
	}
	return r.Rate
}

// recvProbe reads one probe message, turning a peer's error message into
// an error.
func recvProbe(ctx context.Context, c Conn, buf []sample) (probeMsg, error) {
	b, err := c.Recv(ctx)
	if err != nil {
		return probeMsg{}, err
	}
	m, err := parseProbe(b, buf)
	if err != nil {
		return m, err
	}
	if m.typ == msgError {
		return m, fmt.Errorf("peer: %q: %w", m.text, ErrProbeProtocol)
	}
	return m, nil
}

// sendProbeError tells the peer why the probe ends, best effort and
// briefly: the connection may be what failed.
func sendProbeError(ctx context.Context, c Conn, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = c.Send(ctx, appendError(nil, err.Error()))
}

// Respond answers a peer's Probe until it is done. It returns the first
// message that is not part of a probe, when the peer skipped probing or
// sent nothing more (leftover), so that the caller can hand it on to the
// pipeline; leftover is nil after a done message. Bursts are bounded by
// MaxBurstMessages and MaxBurstMessageSize; anything else is an error
// matching ErrProbeProtocol, which Respond also reports to the peer.
func Respond(ctx context.Context, c Conn) (leftover []byte, err error) {
	var (
		inRound      bool
		round, count uint32
		size         uint32
		first        time.Time
		samples      []sample
		out          []byte
	)
	fail := func(err error) ([]byte, error) {
		sendProbeError(ctx, c, err)
		return nil, err
	}
	for {
		b, err := c.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("probe respond: receive: %w", err)
		}
		now := time.Now()
		if !IsProbeMessage(b) {
			if inRound {
				return fail(fmt.Errorf("probe respond: a %d-byte non-probe message inside burst %d: %w", len(b), round, ErrProbeProtocol))
			}
			return b, nil
		}
		m, err := parseProbe(b, nil)
		if err != nil {
			return fail(fmt.Errorf("probe respond: %w", err))
		}
		if inRound && m.typ != msgBurstData && m.typ != msgBurstEnd && m.typ != msgError {
			return fail(fmt.Errorf("probe respond: %s inside burst %d: %w", probeName(m.typ), round, ErrProbeProtocol))
		}
		switch m.typ {
		case msgPing:
			if err := c.Send(ctx, appendPing(out[:0], msgPong, m.seq)); err != nil {
				return nil, fmt.Errorf("probe respond: send pong: %w", err)
			}
		case msgBurstStart:
			inRound, round, count, size = true, m.round, m.count, m.size
			samples = samples[:0]
		case msgBurstData:
			if !inRound || m.round != round || m.index != uint32(len(samples)) || m.index >= count || m.dataMsgBytes != int(size) {
				return fail(fmt.Errorf("probe respond: burst message %d of round %d (%d bytes) does not follow message %d of round %d (%d of %d bytes): %w",
					m.index, m.round, m.dataMsgBytes, len(samples), round, count, size, ErrProbeProtocol))
			}
			if len(samples) == 0 {
				first = now
			}
			samples = append(samples, sample{at: uint64(now.Sub(first)), bytes: uint32(m.dataMsgBytes)})
		case msgBurstEnd:
			if !inRound || m.round != round || m.sent != uint32(len(samples)) {
				return fail(fmt.Errorf("probe respond: end of round %d after %d messages, but %d arrived in round %d: %w",
					m.round, m.sent, len(samples), round, ErrProbeProtocol))
			}
			inRound = false
			out = appendReport(out[:0], round, samples)
			if err := c.Send(ctx, out); err != nil {
				return nil, fmt.Errorf("probe respond: send report of round %d: %w", round, err)
			}
		case msgDone:
			return nil, nil
		case msgError:
			return nil, fmt.Errorf("probe respond: peer: %q: %w", m.text, ErrProbeProtocol)
		default:
			return fail(fmt.Errorf("probe respond: unexpected %s: %w", probeName(m.typ), ErrProbeProtocol))
		}
	}
}
