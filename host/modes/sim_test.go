package modes

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/dwcp/dwcp/host/pipeline"
)

// sim is a discrete-event model of pipeline.Send feeding a Controller: a
// source, Workers encoders that take batches in order, an in-order sender
// whose Send blocks while the transport's window is full, and a link that
// drains the window at a (changeable) rate, acknowledging a frame one RTT
// after it left. It produces the BatchResults the real pipeline would, at
// the simulated times, and calls Choose and Observe in the same order.
type sim struct {
	ctl     pipeline.Policy
	now     time.Time // the controller's clock
	start   time.Time
	workers int
	batch   int           // stream bytes per batch
	slots   int           // batches in flight (the pipeline's 2*Workers+2)
	window  int           // transport send window, bytes
	rtt     time.Duration // for acknowledgements
	// link is the link's rate (wire bytes/s) at a simulated time; source
	// the input rate (0: unlimited).
	link   func(at time.Duration) float64
	source float64
	// truth: what each choice really costs (speed per encoder in stream
	// bytes/s, ratio); noise: uniform relative jitter on encode times,
	// frame sizes and link rate.
	truth map[pipeline.Choice]simCodec
	noise float64
	rng   *rand.Rand

	i          int
	clock      *time.Time // the controller's clock, while run runs
	acks       []simFrame // every frame, for the delivery rate
	workerFree []time.Time
	emitted    []time.Time // emission time per batch
	accepted   []time.Time // Send returned, per batch
	linkFree   time.Time
	unacked    []simFrame
	pending    []simEvent
	choices    []pipeline.Choice // per batch, as chosen
	chosenAt   []time.Time
}

type simCodec struct{ speed, ratio float64 }

type simFrame struct {
	bytes int
	ack   time.Time
}

type simEvent struct {
	at time.Time
	r  pipeline.BatchResult
}

// truthFrom makes the true costs from the priors, scaled (a slower CPU,
// more compressible data).
func truthFrom(l Ladder, speedScale, ratioScale float64) map[pipeline.Choice]simCodec {
	m := map[pipeline.Choice]simCodec{}
	for _, s := range l {
		sp := s.Speed * speedScale
		r := s.Ratio * ratioScale
		if s.Choice.Codec == 0 {
			sp, r = math.Inf(1), ratioScale // the page stage's savings only
		}
		m[s.Choice] = simCodec{speed: sp, ratio: r}
	}
	return m
}

func newSim(ctl pipeline.Policy, clock *time.Time, workers int, link func(time.Duration) float64, truth map[pipeline.Choice]simCodec) *sim {
	return &sim{
		ctl: ctl, now: *clock, start: *clock, workers: workers, batch: 1 << 20, slots: 2*workers + 2,
		window: 16 << 20, rtt: 20 * time.Millisecond, link: link, truth: truth,
		rng: rand.New(rand.NewPCG(1, 2)), workerFree: make([]time.Time, workers),
	}
}

func (s *sim) jitter() float64 {
	if s.noise == 0 {
		return 1
	}
	return 1 + s.noise*(2*s.rng.Float64()-1)
}

// deliver runs the observations due by t, in order, on the clock.
func (s *sim) deliver(t time.Time, clock *time.Time) {
	for len(s.pending) > 0 && !s.pending[0].at.After(t) {
		e := s.pending[0]
		s.pending = s.pending[1:]
		*clock = e.at
		s.ctl.Observe(e.r)
	}
}

// step simulates one batch; clock is the controller's Now.
func (s *sim) step(clock *time.Time) {
	i := s.i
	s.i++
	// Emission: when the source has the bytes and a slot is free.
	e := s.start
	if i > 0 {
		e = later(e, s.emitted[i-1])
	}
	if s.source > 0 {
		e = later(e, s.start.Add(time.Duration(float64(i*s.batch)/s.source*1e9)))
	}
	if i >= s.slots {
		e = later(e, s.accepted[i-s.slots])
	}
	s.deliver(e, clock)
	*clock = later(*clock, e)
	ch := s.ctl.Choose()
	s.choices = append(s.choices, ch)
	s.chosenAt = append(s.chosenAt, e)
	s.emitted = append(s.emitted, e)

	// Encode on the first free worker.
	tc, ok := s.truth[ch]
	if !ok {
		panic("choice not in the simulated truth")
	}
	w := 0
	for k := range s.workerFree {
		if s.workerFree[k].Before(s.workerFree[w]) {
			w = k
		}
	}
	var enc time.Duration
	if !math.IsInf(tc.speed, 1) {
		enc = time.Duration(float64(s.batch) / tc.speed * s.jitter() * 1e9)
	}
	done := later(e, s.workerFree[w]).Add(enc)
	s.workerFree[w] = done
	wire := int(float64(s.batch)/tc.ratio*s.jitter()) + 32

	// Send: in order, blocking while the window is full.
	sendStart := done
	if i > 0 {
		sendStart = later(sendStart, s.accepted[i-1])
	}
	t := sendStart
	for {
		in := 0
		k := 0
		for k < len(s.unacked) && !s.unacked[k].ack.After(t) {
			k++
		}
		s.unacked = s.unacked[k:]
		for _, f := range s.unacked {
			in += f.bytes
		}
		if in+wire <= s.window || len(s.unacked) == 0 {
			break
		}
		t = s.unacked[0].ack
	}
	accept := t
	s.accepted = append(s.accepted, accept)
	rate := s.link(later(accept, s.linkFree).Sub(s.start)) * s.jitter()
	fin := later(accept, s.linkFree).Add(time.Duration(float64(wire) / rate * 1e9))
	s.linkFree = fin
	s.unacked = append(s.unacked, simFrame{bytes: wire, ack: fin.Add(s.rtt)})
	s.acks = append(s.acks, simFrame{bytes: wire, ack: fin.Add(s.rtt)})
	s.pending = append(s.pending, simEvent{at: accept, r: pipeline.BatchResult{
		Choice: ch, Decoded: s.batch, Wire: wire, Encode: enc, SendWait: accept.Sub(sendStart),
	}})
}

// finished is when the last frame so far has crossed the link.
func (s *sim) finished() time.Duration { return s.linkFree.Sub(s.start) }

// run simulates n more batches.
func (s *sim) run(n int, clock *time.Time) {
	s.clock = clock
	for range n {
		s.step(clock)
	}
}

// Sample is the transport's view as a LinkSampler: the delivery rate, the
// bytes acknowledged over the last 250 ms (the transport smooths samples
// of at least 100 ms).
func (s *sim) Sample() LinkSample {
	if s.clock == nil {
		return LinkSample{}
	}
	now := *s.clock
	var b int
	for i := len(s.acks) - 1; i >= 0; i-- {
		a := s.acks[i].ack
		if a.After(now) {
			continue
		}
		if now.Sub(a) > 250*time.Millisecond {
			break
		}
		b += s.acks[i].bytes
	}
	return LinkSample{RTT: s.rtt, DeliveryRate: float64(b) / 0.25}
}

// elapsed is the simulated time of batch i's choice.
func (s *sim) elapsed(i int) time.Duration { return s.chosenAt[i].Sub(s.start) }

// firstAt returns the first batch at or after from whose choice is c, or -1.
func (s *sim) firstAt(from int, c pipeline.Choice) int {
	for i := from; i < len(s.choices); i++ {
		if s.choices[i] == c {
			return i
		}
	}
	return -1
}

// changes counts choice changes between batches from and to.
func (s *sim) changes(from, to int) int {
	n := 0
	for i := max(from, 1); i < min(to, len(s.choices)); i++ {
		if s.choices[i] != s.choices[i-1] {
			n++
		}
	}
	return n
}
