package shm

import (
	"bytes"
	"errors"
	"math"
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
	g := mustGeometry(t, 2, 1<<20, 1<<20)
	r := request{seq: 0xFFFFFFFF, op: 7, arg: -42, inLen: 99, outCap: 1 << 20}
	var b [requestSize]byte
	encodeRequest(b[:], r)
	got, err := decodeRequest(b[:], g, r.seq)
	if err != nil || got != r {
		t.Fatalf("request round trip: got %+v, %v; want %+v", got, err, r)
	}
	// Byte positions are the documented layout; pin a few.
	if le.Uint32(b[0:]) != 0xFFFFFFFF || le.Uint32(b[4:]) != 7 || int64(le.Uint64(b[8:])) != -42 || le.Uint32(b[20:]) != 1<<20 {
		t.Fatalf("request layout changed: % x", b)
	}

	c := completion{seq: 5, code: 17, n: 4096}
	var cb [completionSize]byte
	encodeCompletion(cb[:], c)
	gotc, err := decodeCompletion(cb[:], 5, 0, MaxErrorMessage)
	if err != nil || gotc != c {
		t.Fatalf("completion round trip: got %+v, %v", gotc, err)
	}
	if le.Uint32(cb[0:]) != 5 || le.Uint32(cb[4:]) != 17 || le.Uint32(cb[8:]) != 4096 {
		t.Fatalf("completion layout changed: % x", cb)
	}

	h := hello{version: protocolVersion, geometry: geometry{slots: 2, slotIn: 4096, slotOut: 8192}, arenaSize: 4096 + 24576}
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
	g := mustGeometry(t, 2, 4096, 8192)
	ok := request{seq: 3, op: 1, inLen: 4096, outCap: 8192}
	var b [requestSize]byte
	encodeRequest(b[:], ok)
	if _, err := decodeRequest(b[:], g, 3); err != nil {
		t.Fatalf("full-slot request rejected: %v", err)
	}
	mut := map[string]func(x []byte) []byte{
		"empty":                   func(x []byte) []byte { return nil },
		"short":                   func(x []byte) []byte { return x[:requestSize-1] },
		"long":                    func(x []byte) []byte { return append(x, 0) },
		"sequence changed":        func(x []byte) []byte { le.PutUint32(x[0:], 4); return x },
		"reserved set":            func(x []byte) []byte { x[31] = 1; return x },
		"input one byte too long": func(x []byte) []byte { le.PutUint32(x[16:], 4097); return x },
		"input huge":              func(x []byte) []byte { le.PutUint32(x[16:], math.MaxUint32); return x },
		"output one byte too long": func(x []byte) []byte {
			le.PutUint32(x[20:], 8193)
			return x
		},
	}
	for name, m := range mut {
		if _, err := decodeRequest(m(bytes.Clone(b[:])), g, 3); !errors.Is(err, ErrProtocol) {
			t.Errorf("request %s: err %v, want ErrProtocol", name, err)
		}
	}

	var cb [completionSize]byte
	encodeCompletion(cb[:], completion{seq: 9, n: 100})
	if _, err := decodeCompletion(cb[:], 9, 100, MaxErrorMessage); err != nil {
		t.Fatalf("exact-size completion rejected: %v", err)
	}
	cmut := map[string]func(x []byte) []byte{
		"short":          func(x []byte) []byte { return x[:completionSize-1] },
		"wrong sequence": func(x []byte) []byte { le.PutUint32(x[0:], 8); return x },
		"reserved set":   func(x []byte) []byte { x[15] = 1; return x },
		"output longer than asked": func(x []byte) []byte {
			le.PutUint32(x[8:], 101)
			return x
		},
		"error message too long": func(x []byte) []byte {
			le.PutUint32(x[4:], 3)
			le.PutUint32(x[8:], MaxErrorMessage+1)
			return x
		},
	}
	for name, m := range cmut {
		if _, err := decodeCompletion(m(bytes.Clone(cb[:])), 9, 100, MaxErrorMessage); !errors.Is(err, ErrProtocol) {
			t.Errorf("completion %s: err %v, want ErrProtocol", name, err)
		}
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
	if g.ctlSize() != pageSize || g.size() != pageSize+4*12288 || g.inOff(2) != pageSize+2*12288 || g.outOff(2) != pageSize+2*12288+8192 || g.ctlOff(3) != 4*ctlBlock {
		t.Fatalf("layout: size %d in(2) %d out(2) %d", g.size(), g.inOff(2), g.outOff(2))
	}
	// 63 slots and the header fill the first page exactly; 64 need two.
	if mustGeometry(t, 63, 4096, 4096).ctlSize() != pageSize || mustGeometry(t, 64, 4096, 4096).ctlSize() != 2*pageSize {
		t.Fatal("control area not rounded to pages")
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

// fuzzGeometry derives a valid geometry from fuzzer input so that the range
// checks are exercised on many layouts.
func fuzzGeometry(t *testing.T, slots, in, out uint32) geometry {
	return mustGeometry(t, slots%64+1, (in%64+1)*pageSize, (out%64+1)*pageSize)
}

func FuzzDecodeRequest(f *testing.F) {
	var b [requestSize]byte
	encodeRequest(b[:], request{seq: 1, op: 1, inLen: 100, outCap: 8192})
	f.Add(bytes.Clone(b[:]), uint32(1), uint32(3), uint32(0), uint32(1))
	encodeRequest(b[:], request{seq: 7, inLen: math.MaxUint32, outCap: 2})
	f.Add(bytes.Clone(b[:]), uint32(7), uint32(0), uint32(0), uint32(0))
	f.Add([]byte{1, 2, 3}, uint32(0), uint32(1), uint32(1), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, want, slots, in, out uint32) {
		g := fuzzGeometry(t, slots, in, out)
		r, err := decodeRequest(data, g, want)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [requestSize]byte
		encodeRequest(re[:], r)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the record:\n% x\n% x", data, re)
		}
		// What the plugin slices next, for every slot: both regions end
		// inside their own half of the slot, inside the arena.
		for _, i := range []uint32{0, g.slots - 1} {
			if r.seq != want || g.inOff(i)+uint64(r.inLen) > g.outOff(i) ||
				g.outOff(i)+uint64(r.outCap) > g.inOff(i)+g.stride() || g.inOff(i)+g.stride() > g.size() {
				t.Fatalf("accepted request escapes slot %d: %+v in %+v", i, r, g)
			}
		}
	})
}

func FuzzDecodeCompletion(f *testing.F) {
	var b [completionSize]byte
	encodeCompletion(b[:], completion{seq: 2, code: 0, n: 4096})
	f.Add(bytes.Clone(b[:]), uint32(2), uint32(4096))
	encodeCompletion(b[:], completion{seq: 2, code: 9, n: 12})
	f.Add(bytes.Clone(b[:]), uint32(2), uint32(0))
	f.Add(make([]byte, completionSize), uint32(0), uint32(0))
	f.Add([]byte{}, uint32(1), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, seq, outCap uint32) {
		c, err := decodeCompletion(data, seq, outCap, MaxErrorMessage)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [completionSize]byte
		encodeCompletion(re[:], c)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the record:\n% x\n% x", data, re)
		}
		// What the host slices next.
		if c.seq != seq || (c.code == 0 && c.n > outCap) || (c.code != 0 && c.n > MaxErrorMessage) {
			t.Fatalf("accepted completion %+v for seq %d, outCap %d", c, seq, outCap)
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

func FuzzDecodeBatchEntry(f *testing.F) {
	var b [batchEntrySize]byte
	encodeBatchEntry(b[:], BatchEntry{Op: 1, Arg: -3, InOff: BatchDataOffset, InLen: 100, OutOff: BatchDataOffset, OutCap: 200})
	f.Add(bytes.Clone(b[:]), uint32(8192), uint32(8192))
	encodeBatchEntry(b[:], BatchEntry{Op: OpBatch, InOff: BatchDataOffset, OutOff: BatchDataOffset})
	f.Add(bytes.Clone(b[:]), uint32(8192), uint32(8192))
	encodeBatchEntry(b[:], BatchEntry{Op: 2, InOff: math.MaxUint32, InLen: 2, OutOff: BatchDataOffset})
	f.Add(bytes.Clone(b[:]), uint32(math.MaxUint32), uint32(8192))
	f.Add([]byte{1, 2, 3}, uint32(1), uint32(1))
	f.Fuzz(func(t *testing.T, data []byte, inEnd, outEnd uint32) {
		e, err := decodeBatchEntry(data, inEnd, outEnd)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [batchEntrySize]byte
		encodeBatchEntry(re[:], e)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the entry:\n% x\n% x", data, re)
		}
		// What the plugin slices next: both ranges past the tables and
		// inside what the request covers, with no wrap-around.
		if e.Op >= OpReserved || e.InOff < BatchDataOffset || e.OutOff < BatchDataOffset ||
			uint64(e.InOff)+uint64(e.InLen) > uint64(inEnd) || uint64(e.OutOff)+uint64(e.OutCap) > uint64(outEnd) {
			t.Fatalf("accepted entry %+v escapes [%d, %d) / [%d, %d)", e, BatchDataOffset, inEnd, BatchDataOffset, outEnd)
		}
	})
}

func FuzzDecodeBatchResult(f *testing.F) {
	var b [batchResultSize]byte
	encodeBatchResult(b[:], BatchResult{N: 100})
	f.Add(bytes.Clone(b[:]), uint32(100))
	encodeBatchResult(b[:], BatchResult{Code: 3, N: 5000})
	f.Add(bytes.Clone(b[:]), uint32(8192))
	f.Add([]byte{}, uint32(0))
	f.Fuzz(func(t *testing.T, data []byte, outCap uint32) {
		e := BatchEntry{Op: 1, InOff: BatchDataOffset, OutOff: BatchDataOffset, OutCap: outCap}
		r, err := decodeBatchResult(data, e)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("decode error %v does not wrap ErrProtocol", err)
			}
			return
		}
		var re [batchResultSize]byte
		encodeBatchResult(re[:], r)
		if !bytes.Equal(re[:], data) {
			t.Fatalf("re-encoding changed the result:\n% x\n% x", data, re)
		}
		// What the host slices next.
		if r.N > outCap || (r.Code != 0 && r.N > MaxErrorMessage) {
			t.Fatalf("accepted result %+v for an entry of %d bytes", r, outCap)
		}
	})
}
