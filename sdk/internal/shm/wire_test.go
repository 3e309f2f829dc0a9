package shm

import (
	"bytes"
	"errors"
	"math"
	"math/bits"
	"testing"
)

func mustGeometry(t testing.TB, slots, in, out uint32) geometry {
	t.Helper()
	g, err := newGeometry(slots, in, out)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestWireRoundTrip(t *testing.T) {
	r := request{slot: 3, seq: 0xFFFFFFFF, op: 7, arg: -42, inOff: 1 << 40, outOff: 12345, inLen: 99, outCap: 1 << 20}
	var b [requestSize]byte
	encodeRequest(b[:], r)
	got, err := decodeRequest(b[:])
	if err != nil || got != r {
		t.Fatalf("request round trip: got %+v, %v; want %+v", got, err, r)
	}
	// Byte positions are the documented wire format; pin a few.
	if le.Uint32(b[0:]) != typeRequest || le.Uint32(b[4:]) != 3 || int64(le.Uint64(b[16:])) != -42 || le.Uint32(b[44:]) != 1<<20 {
		t.Fatalf("request layout changed: % x", b)
	}

	c := completion{slot: 9, seq: 5, code: 17, n: 4096}
	var cb [completionSize]byte
	encodeCompletion(cb[:], c)
	gotc, err := decodeCompletion(cb[:])
	if err != nil || gotc != c {
		t.Fatalf("completion round trip: got %+v, %v", gotc, err)
	}
	if le.Uint32(cb[12:]) != 17 || le.Uint32(cb[16:]) != 4096 {
		t.Fatalf("completion layout changed: % x", cb)
	}

	h := hello{version: protocolVersion, geometry: geometry{slots: 2, slotIn: 4096, slotOut: 8192}, arenaSize: 24576}
	var hb [helloSize]byte
	encodeHello(hb[:], h)
	goth, err := decodeHello(hb[:])
	if err != nil || goth != h {
		t.Fatalf("hello round trip: got %+v, %v", goth, err)
	}

	a := ack{version: protocolVersion, status: ackBadArena}
	var ab [ackSize]byte
	encodeAck(ab[:], a)
	gota, err := decodeAck(ab[:])
	if err != nil || gota != a {
		t.Fatalf("ack round trip: got %+v, %v", gota, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	var b [maxMessage]byte
	encodeRequest(b[:], request{slot: 1})
	cases := map[string][]byte{
		"empty":      nil,
		"short":      b[:requestSize-1],
		"long":       b[:requestSize+1],
		"wrong type": func() []byte { x := bytes.Clone(b[:requestSize]); x[0] ^= 1; return x }(),
	}
	for name, msg := range cases {
		if _, err := decodeRequest(msg); !errors.Is(err, ErrProtocol) {
			t.Errorf("request %s: err %v, want ErrProtocol", name, err)
		}
	}
	encodeCompletion(b[:], completion{slot: 1, n: 3})
	le.PutUint32(b[20:], 1)
	if _, err := decodeCompletion(b[:completionSize]); !errors.Is(err, ErrProtocol) {
		t.Errorf("completion with reserved bits: err %v, want ErrProtocol", err)
	}
	if _, err := decodeCompletion(b[:requestSize]); !errors.Is(err, ErrProtocol) {
		t.Errorf("completion of request size: err %v, want ErrProtocol", err)
	}
}

func TestGeometryLimits(t *testing.T) {
	bad := [][3]uint32{
		{0, 4096, 4096},
		{maxSlots + 1, 4096, 4096},
		{1, 0, 4096},
		{1, 4095, 4096},
		{1, 4096, 4097},
		{1, maxRegion + pageSize, 4096},
		{maxSlots, maxRegion, maxRegion}, // 2 TiB arena
	}
	for _, b := range bad {
		if _, err := newGeometry(b[0], b[1], b[2]); !errors.Is(err, ErrProtocol) {
			t.Errorf("newGeometry%v: err %v, want ErrProtocol", b, err)
		}
	}
	g := mustGeometry(t, 4, 8192, 4096)
	if g.size() != 4*12288 || g.inOff(2) != 2*12288 || g.outOff(2) != 2*12288+8192 {
		t.Fatalf("layout: size %d in(2) %d out(2) %d", g.size(), g.inOff(2), g.outOff(2))
	}
	o, err := ClientOptions{Slots: 3, SlotInput: 5000, SlotOutput: 1}.geometry()
	if err != nil || o.slots != 3 || o.slotIn != 8192 || o.slotOut != 4096 {
		t.Fatalf("options rounding: %+v, %v", o, err)
	}
	if d, err := (ClientOptions{}).geometry(); err != nil || d.slots != defaultSlots || d.slotIn != defaultSlotInput || d.slotOut < d.slotIn {
		t.Fatalf("defaults: %+v, %v", d, err)
	}
	for _, o := range []ClientOptions{{Slots: -1}, {SlotInput: -5}, {SlotOutput: maxRegion + 1}, {Slots: maxSlots + 1}} {
		if _, err := o.geometry(); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

func TestCheckRequest(t *testing.T) {
	g := mustGeometry(t, 2, 4096, 8192)
	ok := request{slot: 1, inOff: g.inOff(1), inLen: 4096, outOff: g.outOff(1), outCap: 8192}
	if err := g.checkRequest(ok); err != nil {
		t.Fatalf("full-slot request rejected: %v", err)
	}
	mut := map[string]func(r *request){
		"slot out of range":       func(r *request) { r.slot = 2 },
		"input in other slot":     func(r *request) { r.inOff = g.inOff(0) },
		"input one byte too long": func(r *request) { r.inLen = 4097 },
		"input runs into output":  func(r *request) { r.inOff += 1; r.inLen = 4096 },
		"input offset overflows":  func(r *request) { r.inOff = math.MaxUint64; r.inLen = 2 },
		"output in input region":  func(r *request) { r.outOff = g.inOff(1) },
		"output past arena":       func(r *request) { r.outOff = g.size(); r.outCap = 1 },
		"output too long":         func(r *request) { r.outCap = 8193 },
		"output offset overflows": func(r *request) { r.outOff = math.MaxUint64 - 10; r.outCap = 100 },
	}
	for name, m := range mut {
		r := ok
		m(&r)
		if err := g.checkRequest(r); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: err %v, want ErrProtocol", name, err)
		}
	}
	// Zero-length regions at the very end of a slot are legal.
	end := request{slot: 1, inOff: g.outOff(1), outOff: g.size()}
	if err := g.checkRequest(end); err != nil {
		t.Errorf("empty regions at slot end rejected: %v", err)
	}
}

// fuzzGeometry derives a valid geometry from fuzzer input so that the range
// checks are exercised on many layouts.
func fuzzGeometry(t *testing.T, slots, in, out uint32) geometry {
	return mustGeometry(t, slots%64+1, (in%64+1)*pageSize, (out%64+1)*pageSize)
}

func FuzzDecodeRequest(f *testing.F) {
	g := geometry{slots: 4, slotIn: 4096, slotOut: 8192}
	var b [requestSize]byte
	encodeRequest(b[:], request{slot: 2, seq: 1, op: 1, inOff: g.inOff(2), inLen: 100, outOff: g.outOff(2), outCap: 8192})
	f.Add(bytes.Clone(b[:]), uint32(3), uint32(0), uint32(1))
	encodeRequest(b[:], request{slot: 0, inOff: math.MaxUint64, inLen: 2})
	f.Add(bytes.Clone(b[:]), uint32(0), uint32(0), uint32(0))
	f.Add([]byte{1, 2, 3}, uint32(1), uint32(1), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, slots, in, out uint32) {
		r, err := decodeRequest(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [requestSize]byte
		encodeRequest(re[:], r)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the message:\n% x\n% x", data, re)
		}
		g := fuzzGeometry(t, slots, in, out)
		if err := g.checkRequest(r); err != nil {
			return
		}
		// Independently of within(): both regions end inside their own
		// half of their own slot, with no wrap-around.
		inEnd, c1 := bits.Add64(r.inOff, uint64(r.inLen), 0)
		outEnd, c2 := bits.Add64(r.outOff, uint64(r.outCap), 0)
		slotStart := uint64(r.slot) * (uint64(g.slotIn) + uint64(g.slotOut))
		if c1 != 0 || c2 != 0 || r.slot >= g.slots ||
			r.inOff < slotStart || inEnd > slotStart+uint64(g.slotIn) ||
			r.outOff < slotStart+uint64(g.slotIn) || outEnd > slotStart+uint64(g.slotIn)+uint64(g.slotOut) ||
			outEnd > g.size() {
			t.Fatalf("accepted request escapes its slot: %+v in %+v", r, g)
		}
	})
}

func FuzzDecodeCompletion(f *testing.F) {
	var b [completionSize]byte
	encodeCompletion(b[:], completion{slot: 1, seq: 2, code: 0, n: 4096})
	f.Add(bytes.Clone(b[:]))
	encodeCompletion(b[:], completion{slot: 1, seq: 2, code: 9, n: 12})
	f.Add(bytes.Clone(b[:]))
	f.Add(make([]byte, completionSize))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeCompletion(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [completionSize]byte
		encodeCompletion(re[:], c)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the message:\n% x\n% x", data, re)
		}
	})
}

func FuzzDecodeHello(f *testing.F) {
	var b [helloSize]byte
	encodeHello(b[:], hello{version: 1, geometry: geometry{slots: 16, slotIn: 1 << 20, slotOut: 1 << 20}, arenaSize: 32 << 20})
	f.Add(bytes.Clone(b[:]))
	f.Add(make([]byte, helloSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := decodeHello(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [helloSize]byte
		encodeHello(re[:], h)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the message")
		}
		// What the plugin does next: a geometry it accepts must have a
		// size it can map without overflow.
		if g, err := newGeometry(h.slots, h.slotIn, h.slotOut); err == nil {
			if g.size() > maxArena || g.size() < uint64(g.slots)*2*pageSize {
				t.Fatalf("accepted geometry %+v has size %d", g, g.size())
			}
		}
	})
}

func FuzzDecodeAck(f *testing.F) {
	var b [ackSize]byte
	encodeAck(b[:], ack{version: 1})
	f.Add(bytes.Clone(b[:]))
	f.Add([]byte("DW\x00\x02"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := decodeAck(data)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [ackSize]byte
		encodeAck(re[:], a)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the message")
		}
		if ackStatusText(a.status) == "" {
			t.Fatal("empty status text")
		}
	})
}
