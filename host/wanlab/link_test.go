package wanlab

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

const ms1 = int64(time.Millisecond)

func TestShaperSerialisesAtRate(t *testing.T) {
	// 8 Mbit/s: one byte per microsecond, a 1000-byte packet takes 1 ms.
	s := newShaper(LinkParams{Rate: 8 * Mbps, Delay: 10 * time.Millisecond, QueueBytes: 1 << 20}, 1)
	for i := range 5 {
		v, at := s.admit(0, 1000)
		if v != verdictForward {
			t.Fatalf("packet %d: verdict %d, want forward", i, v)
		}
		// Back-to-back packets leave the bottleneck 1 ms apart, then
		// travel 10 ms.
		if want := int64(i+1)*ms1 + 10*ms1; at != want {
			t.Fatalf("packet %d: at %d, want %d", i, at, want)
		}
	}
	if q := s.queueNow(0); q != 5000 {
		t.Fatalf("queue now %d bytes, want 5000", q)
	}
	// After the backlog drained, a packet goes straight through.
	v, at := s.admit(100*ms1, 500)
	if v != verdictForward || at != 100*ms1+ms1/2+10*ms1 {
		t.Fatalf("idle packet: verdict %d at %d", v, at)
	}
}

func TestShaperDropTail(t *testing.T) {
	s := newShaper(LinkParams{Rate: 8 * Mbps, QueueBytes: 10_000}, 1)
	var fwd, drop int
	for range 100 {
		switch v, _ := s.admit(0, 1000); v {
		case verdictForward:
			fwd++
		case verdictQueue:
			drop++
		default:
			t.Fatalf("verdict %d", v)
		}
	}
	if fwd != 10 || drop != 90 {
		t.Fatalf("forwarded %d dropped %d, want 10 and 90", fwd, drop)
	}
	// Half the queue drained after 5 ms: five more fit, the sixth not.
	for i := range 6 {
		v, _ := s.admit(5*ms1, 1000)
		if want := verdictForward; i == 5 {
			if v != verdictQueue {
				t.Fatalf("packet %d at 5 ms: verdict %d, want queue drop", i, v)
			}
		} else if v != want {
			t.Fatalf("packet %d at 5 ms: verdict %d, want forward", i, v)
		}
	}
	if s.queuePeak != 10_000 {
		t.Fatalf("queue peak %d, want 10000", s.queuePeak)
	}
}

func TestShaperEmptyQueueTakesBigPacket(t *testing.T) {
	s := newShaper(LinkParams{Rate: Gbps, QueueBytes: 100}, 1)
	if v, _ := s.admit(0, 9000); v != verdictForward {
		t.Fatalf("packet larger than the queue into an empty queue: verdict %d", v)
	}
	if v, _ := s.admit(0, 9000); v != verdictQueue {
		t.Fatalf("second packet: verdict %d, want queue drop", v)
	}
}

func TestShaperQueueDelayScalesWithRate(t *testing.T) {
	p := LinkParams{Rate: 100 * Mbps, QueueDelay: 10 * time.Millisecond}
	if got := p.queueLimit(); got != 125_000 {
		t.Fatalf("queue limit %d, want 125000", got)
	}
	p.Rate = 10 * Mbps
	if got := p.queueLimit(); got != 12_500 {
		t.Fatalf("queue limit %d, want 12500", got)
	}
	// No size given: one bandwidth-delay product, at least 64 KiB.
	p = LinkParams{Rate: Gbps, Delay: 50 * time.Millisecond}
	if got := p.queueLimit(); got != 12_500_000 {
		t.Fatalf("default queue %d, want BDP 12500000", got)
	}
	p = LinkParams{Rate: Mbps, Delay: time.Millisecond}
	if got := p.queueLimit(); got != 64<<10 {
		t.Fatalf("default queue %d, want 64 KiB floor", got)
	}
}

func TestShaperLossRate(t *testing.T) {
	const n = 200_000
	s := newShaper(LinkParams{Loss: 0.03}, 42)
	lost := 0
	for i := range n {
		v, _ := s.admit(int64(i), 100)
		switch v {
		case verdictLoss:
			lost++
		case verdictForward:
			s.delivered(100)
		default:
			t.Fatalf("verdict %d", v)
		}
	}
	got := float64(lost) / n
	sigma := math.Sqrt(0.03 * 0.97 / n)
	if math.Abs(got-0.03) > 5*sigma {
		t.Fatalf("loss %.4f, want 0.03 ± %.4f", got, 5*sigma)
	}
}

func TestShaperLossUsesBottleneck(t *testing.T) {
	// A lost packet still occupied the bottleneck: the next one leaves
	// after both.
	s := newShaper(LinkParams{Rate: 8 * Mbps, Loss: 1, QueueBytes: 1 << 20}, 1)
	if v, _ := s.admit(0, 1000); v != verdictLoss {
		t.Fatalf("verdict %d, want loss", v)
	}
	s.set(LinkParams{Rate: 8 * Mbps, QueueBytes: 1 << 20})
	if _, at := s.admit(0, 1000); at != 2*ms1 {
		t.Fatalf("at %d, want %d", at, 2*ms1)
	}
}

func TestShaperCuts(t *testing.T) {
	s := newShaper(LinkParams{Delay: 5 * time.Millisecond}, 1)
	s.cut(10*ms1, 20*ms1)
	for _, tc := range []struct {
		now  int64
		want verdict
	}{{9 * ms1, verdictForward}, {10 * ms1, verdictCut}, {19 * ms1, verdictCut}, {20 * ms1, verdictForward}} {
		if v, _ := s.admit(tc.now, 100); v != tc.want {
			t.Fatalf("at %d ms: verdict %d, want %d", tc.now/ms1, v, tc.want)
		}
	}
	if len(s.cuts) != 0 {
		t.Fatalf("ended cut kept: %v", s.cuts)
	}
	// A packet in flight when a cut starts is lost at delivery.
	s.cut(30*ms1, 40*ms1)
	if !s.isCut(32*ms1, 29*ms1) {
		t.Fatal("delivery inside a cut not reported")
	}
	s.cut(5, 5) // empty: ignored
	if len(s.cuts) != 1 {
		t.Fatalf("cuts %v, want one", s.cuts)
	}
}

func TestShaperJitterKeepsOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spacing int64
		minSpan int64
		mean    [2]int64 // accepted mean delay
	}{
		// Packets further apart than the jitter range see the full,
		// unbiased spread.
		{"sparse", 10 * ms1, 9 * ms1, [2]int64{19*ms1 + ms1/2, 20*ms1 + ms1/2}},
		// Dense packets may not overtake each other, so delays lean
		// towards Delay+Jitter.
		{"dense", ms1 / 10, 3 * ms1, [2]int64{20 * ms1, 25 * ms1}},
	} {
		s := newShaper(LinkParams{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond}, 7)
		var last, sum int64
		lo, hi := int64(math.MaxInt64), int64(0)
		const n = 10_000
		for i := range n {
			now := int64(i) * tc.spacing
			_, at := s.admit(now, 100)
			if at < last {
				t.Fatalf("%s: packet %d delivered at %d before its predecessor at %d", tc.name, i, at, last)
			}
			last = at
			d := at - now
			lo, hi = min(lo, d), max(hi, d)
			sum += d
		}
		mean := sum / n
		if lo < 15*ms1 || hi > 25*ms1 || hi-lo < tc.minSpan || mean < tc.mean[0] || mean > tc.mean[1] {
			t.Errorf("%s: delays %d..%d ns, mean %d", tc.name, lo, hi, mean)
		}
	}
}

func TestShaperJitterReorders(t *testing.T) {
	s := newShaper(LinkParams{Delay: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Reorder: true}, 7)
	var last int64
	reordered := 0
	for i := range 1000 {
		_, at := s.admit(int64(i)*ms1/10, 100)
		if at < last {
			reordered++
		}
		last = at
	}
	if reordered == 0 {
		t.Fatal("reordering asked for, none happened")
	}
}

func TestShaperInFlightCap(t *testing.T) {
	s := newShaper(LinkParams{Delay: time.Second}, 1)
	n := 0
	for {
		v, _ := s.admit(0, 65536)
		if v != verdictForward {
			if v != verdictQueue {
				t.Fatalf("verdict %d, want queue drop at the cap", v)
			}
			break
		}
		n++
	}
	if n != maxInFlightBytes/65536 {
		t.Fatalf("accepted %d packets, want %d", n, maxInFlightBytes/65536)
	}
	s.delivered(65536)
	if v, _ := s.admit(0, 65536); v != verdictForward {
		t.Fatalf("after one delivery: verdict %d", v)
	}
}

func TestPacketHeapOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h packetHeap
	for i := range 2000 {
		h.push(&packet{at: r.Int64N(100), seq: uint64(i)})
	}
	var prev *packet
	for len(h) > 0 {
		p := h.pop()
		if prev != nil && (p.at < prev.at || p.at == prev.at && p.seq < prev.seq) {
			t.Fatalf("popped (%d,%d) after (%d,%d)", p.at, p.seq, prev.at, prev.seq)
		}
		prev = p
	}
}

func TestClassFor(t *testing.T) {
	for _, tc := range []struct{ n, class int }{{0, 0}, {256, 0}, {257, 1}, {1500, 1}, {9000, 2}, {9217, 3}, {65535, 3}, {70000, 3}} {
		if got := classFor(tc.n); got != tc.class {
			t.Errorf("classFor(%d) = %d, want %d", tc.n, got, tc.class)
		}
	}
}

// BenchmarkShaperAdmit is the per-packet cost of the shaping decision.
func BenchmarkShaperAdmit(b *testing.B) {
	s := newShaper(LinkParams{Rate: 10 * Gbps, Delay: 25 * time.Millisecond, Jitter: time.Millisecond, Loss: 0.01, QueueDelay: 10 * time.Millisecond}, 1)
	b.ReportAllocs()
	now := int64(0)
	for b.Loop() {
		now += 1000
		if v, _ := s.admit(now, 1500); v == verdictForward {
			s.delivered(1500)
		}
	}
}

// BenchmarkHeapPushPop is the queue cost per packet with 1000 in flight.
func BenchmarkHeapPushPop(b *testing.B) {
	var h packetHeap
	pkts := make([]packet, 1001)
	for i := range 1000 {
		pkts[i].at = int64(i)
		h.push(&pkts[i])
	}
	b.ReportAllocs()
	at := int64(1000)
	for b.Loop() {
		p := h.pop()
		p.at = at
		at++
		h.push(p)
	}
}
