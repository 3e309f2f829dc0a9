package wanlab

import "sync"

// packet is one IP packet held by the shaper between its read from the
// source TUN and its write into the destination TUN.
type packet struct {
	buf   []byte // capacity is the size class
	n     int
	at    int64  // delivery time, lab nanoseconds
	seq   uint64 // arrival order, breaks ties between equal delivery times
	class int8
}

// Size classes keep small packets (ACKs, probes) from pinning MTU-sized
// buffers while they wait out a long delay: a 100 ms link at 1 Gbit/s holds
// thousands of ACKs in flight.
var classSizes = [...]int{256, 2048, 9216, 65536}

// packetPool recycles packets per size class; steady-state forwarding
// allocates nothing.
type packetPool struct {
	pools [len(classSizes)]sync.Pool
}

func newPacketPool() *packetPool {
	pp := &packetPool{}
	for i := range pp.pools {
		size, class := classSizes[i], int8(i)
		pp.pools[i].New = func() any { return &packet{buf: make([]byte, size), class: class} }
	}
	return pp
}

// classFor is the smallest class that holds n bytes.
func classFor(n int) int {
	for i, s := range classSizes {
		if n <= s {
			return i
		}
	}
	return len(classSizes) - 1
}

func (pp *packetPool) get(class int) *packet {
	p := pp.pools[class].Get().(*packet)
	p.n, p.at, p.seq = 0, 0, 0
	return p
}

func (pp *packetPool) put(p *packet) {
	pp.pools[p.class].Put(p)
}

// packetHeap is a min-heap on (at, seq). Without reordering the delivery
// times never decrease, so pushes land at the bottom and it acts as a FIFO;
// with reordering it sorts packets by their jittered times.
type packetHeap []*packet

func (h packetHeap) less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].seq < h[j].seq
}

func (h *packetHeap) push(p *packet) {
	*h = append(*h, p)
	s := *h
	i := len(s) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !s.less(i, parent) {
			break
		}
		s[i], s[parent] = s[parent], s[i]
		i = parent
	}
}

func (h *packetHeap) pop() *packet {
	s := *h
	n := len(s) - 1
	top := s[0]
	s[0] = s[n]
	s[n] = nil
	s = s[:n]
	i := 0
	for {
		l := 2*i + 1
		if l >= n {
			break
		}
		m := l
		if r := l + 1; r < n && s.less(r, l) {
			m = r
		}
		if !s.less(m, i) {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}
