package wanlab

import (
	"math"
	"math/rand/v2"
)

// verdict is what the shaper decided for one packet.
type verdict uint8

const (
	verdictForward verdict = iota
	verdictQueue           // dropped: the drop-tail queue was full
	verdictLoss            // dropped: random loss
	verdictCut             // dropped: the link was cut
)

// maxInFlightBytes caps the bytes one direction holds (queued plus in
// propagation), so an unlimited-rate link with a long delay cannot take all
// memory. Packets beyond it count as queue drops.
const maxInFlightBytes = 256 << 20

// span is a half-open interval [start, end) of lab time in nanoseconds.
type span struct{ start, end int64 }

// shaper is the model of one direction, apart from any I/O: it decides the
// fate and delivery time of each packet given the time it arrived. Its
// caller serialises access (link.mu). Times are nanoseconds on the lab's
// monotonic clock.
//
// The model is a bottleneck of Rate bits/s behind a drop-tail queue of
// queueLimit bytes, followed by a wire with Delay (plus jitter) and Loss.
// Instead of a token bucket it keeps busyUntil, the time the bottleneck
// finishes sending every accepted packet: the backlog at time t is
// busyUntil-t, which at Rate is the queue's occupancy in bytes. This gives
// exact serialisation without a timer per packet and no burst allowance.
type shaper struct {
	p         LinkParams
	nsPerByte float64 // 8e9/Rate; 0 when unlimited
	qlimitNs  int64   // queue limit as backlog time
	busyUntil int64
	lastAt    int64 // latest delivery time handed out, for in-order jitter
	inFlight  int64 // bytes accepted and not yet delivered or dropped
	cuts      []span
	rng       *rand.Rand
	queuePeak int64 // largest queue occupancy seen, bytes
	// idle sums the time the bottleneck had nothing to send, up to the
	// last arrival: a link that TCP keeps full has little.
	idle int64
}

func newShaper(p LinkParams, seed uint64) *shaper {
	s := &shaper{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	s.set(p)
	return s
}

// set changes the parameters. Packets already accepted keep the times they
// were given; the backlog carries over and drains at the new rate's pace
// only for packets that arrive from now on, as a real bottleneck would after
// its rate changed between two packets.
func (s *shaper) set(p LinkParams) {
	s.p = p
	s.nsPerByte = 0
	s.qlimitNs = 0
	if p.Rate > 0 {
		s.nsPerByte = 8e9 / float64(p.Rate)
		s.qlimitNs = int64(float64(p.queueLimit()) * s.nsPerByte)
	}
}

// cut adds an interval during which every packet is dropped.
func (s *shaper) cut(start, end int64) {
	if end > start {
		s.cuts = append(s.cuts, span{start, end})
	}
}

// isCut reports whether t falls in a cut, forgetting cuts that ended before
// now.
func (s *shaper) isCut(t, now int64) bool {
	hit := false
	kept := s.cuts[:0]
	for _, c := range s.cuts {
		if c.end <= now {
			continue
		}
		kept = append(kept, c)
		if t >= c.start && t < c.end {
			hit = true
		}
	}
	clear(s.cuts[len(kept):])
	s.cuts = kept
	return hit
}

// admit decides the fate of a packet of size bytes arriving at now, and for
// a forwarded packet the time it reaches the other end.
func (s *shaper) admit(now int64, size int) (verdict, int64) {
	if len(s.cuts) > 0 && s.isCut(now, now) {
		return verdictCut, 0
	}
	if s.inFlight+int64(size) > maxInFlightBytes {
		return verdictQueue, 0
	}
	depart := now
	if s.nsPerByte > 0 {
		backlog := max(s.busyUntil-now, 0)
		tx := int64(float64(size) * s.nsPerByte)
		// An empty queue takes any packet, so a queue smaller than one
		// packet still passes traffic.
		if backlog > 0 && backlog+tx > s.qlimitNs {
			return verdictQueue, 0
		}
		if now > s.busyUntil {
			s.idle += now - s.busyUntil
			s.busyUntil = now
		}
		s.busyUntil += tx
		depart = s.busyUntil
		if qb := int64(float64(s.busyUntil-now) / s.nsPerByte); qb > s.queuePeak {
			s.queuePeak = qb
		}
	}
	// Loss is drawn after the queue: a lost packet still used its slot on
	// the bottleneck, as a corrupted frame on a real wire does.
	if s.p.Loss > 0 && s.rng.Float64() < s.p.Loss {
		return verdictLoss, 0
	}
	at := depart + int64(s.p.Delay)
	if j := int64(s.p.Jitter); j > 0 {
		at += s.rng.Int64N(2*j+1) - j
		at = max(at, depart)
	}
	if !s.p.Reorder {
		at = max(at, s.lastAt)
	}
	s.lastAt = max(s.lastAt, at)
	s.inFlight += int64(size)
	return verdictForward, at
}

// delivered accounts for a packet leaving the shaper (written or dropped at
// delivery).
func (s *shaper) delivered(size int) {
	s.inFlight -= int64(size)
}

// queueNow is the queue occupancy in bytes at now.
func (s *shaper) queueNow(now int64) int64 {
	if s.nsPerByte == 0 {
		return 0
	}
	return int64(math.Max(0, float64(s.busyUntil-now)/s.nsPerByte))
}
