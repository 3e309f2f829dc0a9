package shm

import (
	"encoding/binary"
	"fmt"
)

// Wire format. Every message is one SOCK_SEQPACKET datagram of a fixed size,
// little-endian, beginning with a 4-byte type. Sizes are exact: a datagram of
// any other length is a protocol violation. docs/dataplane.md draws the
// layouts.

const (
	// protocolVersion is carried in hello/ack; a plugin refuses others.
	protocolVersion = 1

	typeHello      uint32 = 0x44570001 // "DW" + 1, host -> plugin, carries the memfd
	typeAck        uint32 = 0x44570002 // plugin -> host
	typeRequest    uint32 = 0x44570003 // host -> plugin
	typeCompletion uint32 = 0x44570004 // plugin -> host

	helloSize      = 32
	ackSize        = 16
	requestSize    = 48
	completionSize = 24

	// maxMessage is the receive buffer size: larger than every message so
	// that an oversized datagram shows up as a wrong length, not as a
	// silently truncated valid one.
	maxMessage = 64
)

// Arena limits. They keep every offset computation far from overflow and
// bound what a hostile hello can ask the plugin to map.
const (
	pageSize  = 4096
	maxSlots  = 4096
	maxRegion = 256 << 20
	maxArena  = 64 << 30
)

// Ack status values. A refusing plugin says why before it closes.
const (
	ackOK uint32 = iota
	ackBadVersion
	ackBadArena
)

func ackStatusText(s uint32) string {
	switch s {
	case ackOK:
		return "ok"
	case ackBadVersion:
		return "unsupported protocol version"
	case ackBadArena:
		return "arena rejected"
	}
	return fmt.Sprintf("unknown status %d", s)
}

// geometry is the arena layout: slots of [input | output], back to back.
type geometry struct {
	slots   uint32
	slotIn  uint32
	slotOut uint32
}

func newGeometry(slots, slotIn, slotOut uint32) (geometry, error) {
	g := geometry{slots: slots, slotIn: slotIn, slotOut: slotOut}
	switch {
	case slots < 1 || slots > maxSlots:
		return geometry{}, fmt.Errorf("arena geometry: %w: %d slots outside [1, %d]", ErrProtocol, slots, maxSlots)
	case slotIn < pageSize || slotIn > maxRegion || slotIn%pageSize != 0:
		return geometry{}, fmt.Errorf("arena geometry: %w: slot input %d not a page multiple in [%d, %d]", ErrProtocol, slotIn, pageSize, maxRegion)
	case slotOut < pageSize || slotOut > maxRegion || slotOut%pageSize != 0:
		return geometry{}, fmt.Errorf("arena geometry: %w: slot output %d not a page multiple in [%d, %d]", ErrProtocol, slotOut, pageSize, maxRegion)
	case g.size() > maxArena:
		return geometry{}, fmt.Errorf("arena geometry: %w: %d bytes exceeds %d", ErrProtocol, g.size(), uint64(maxArena))
	}
	return g, nil
}

func (g geometry) stride() uint64 { return uint64(g.slotIn) + uint64(g.slotOut) }
func (g geometry) size() uint64   { return uint64(g.slots) * g.stride() }

// inOff and outOff are where slot i's regions start.
func (g geometry) inOff(i uint32) uint64  { return uint64(i) * g.stride() }
func (g geometry) outOff(i uint32) uint64 { return uint64(i)*g.stride() + uint64(g.slotIn) }

// checkRequest proves a request's regions lie inside its own slot (hence
// inside the arena) before the plugin slices shared memory with them.
func (g geometry) checkRequest(r request) error {
	if r.slot >= g.slots {
		return fmt.Errorf("request slot %d: %w: only %d slots", r.slot, ErrProtocol, g.slots)
	}
	if !within(r.inOff, r.inLen, g.inOff(r.slot), g.slotIn) {
		return fmt.Errorf("request slot %d: %w: input [%d,+%d) outside slot input region", r.slot, ErrProtocol, r.inOff, r.inLen)
	}
	if !within(r.outOff, r.outCap, g.outOff(r.slot), g.slotOut) {
		return fmt.Errorf("request slot %d: %w: output [%d,+%d) outside slot output region", r.slot, ErrProtocol, r.outOff, r.outCap)
	}
	return nil
}

// within reports whether [off, off+n) lies inside [start, start+size)
// without computing off+n, which a hostile off could overflow.
func within(off uint64, n uint32, start uint64, size uint32) bool {
	return off >= start && off-start <= uint64(size) && uint64(n) <= uint64(size)-(off-start)
}

type hello struct {
	version uint32
	geometry
	arenaSize uint64
}

// Hello layout (32 bytes):
//
//	0  u32 type = typeHello
//	4  u32 version
//	8  u32 slots
//	12 u32 slot input bytes
//	16 u32 slot output bytes
//	20 u32 reserved, zero
//	24 u64 arena bytes
func encodeHello(b []byte, h hello) {
	_ = b[helloSize-1]
	le.PutUint32(b[0:], typeHello)
	le.PutUint32(b[4:], h.version)
	le.PutUint32(b[8:], h.slots)
	le.PutUint32(b[12:], h.slotIn)
	le.PutUint32(b[16:], h.slotOut)
	le.PutUint32(b[20:], 0)
	le.PutUint64(b[24:], h.arenaSize)
}

// decodeHello checks the framing only; the plugin validates the geometry
// after it has checked the version, so that it can say which one failed.
func decodeHello(b []byte) (hello, error) {
	if err := checkFrame(b, typeHello, helloSize, "hello"); err != nil {
		return hello{}, err
	}
	if le.Uint32(b[20:]) != 0 {
		return hello{}, fmt.Errorf("decode hello: %w: reserved field not zero", ErrProtocol)
	}
	return hello{
		version:   le.Uint32(b[4:]),
		geometry:  geometry{slots: le.Uint32(b[8:]), slotIn: le.Uint32(b[12:]), slotOut: le.Uint32(b[16:])},
		arenaSize: le.Uint64(b[24:]),
	}, nil
}

type ack struct {
	version uint32
	status  uint32
}

// Ack layout (16 bytes):
//
//	0  u32 type = typeAck
//	4  u32 version
//	8  u32 status (0 = arena mapped, serving)
//	12 u32 reserved, zero
func encodeAck(b []byte, a ack) {
	_ = b[ackSize-1]
	le.PutUint32(b[0:], typeAck)
	le.PutUint32(b[4:], a.version)
	le.PutUint32(b[8:], a.status)
	le.PutUint32(b[12:], 0)
}

func decodeAck(b []byte) (ack, error) {
	if err := checkFrame(b, typeAck, ackSize, "ack"); err != nil {
		return ack{}, err
	}
	if le.Uint32(b[12:]) != 0 {
		return ack{}, fmt.Errorf("decode ack: %w: reserved field not zero", ErrProtocol)
	}
	return ack{version: le.Uint32(b[4:]), status: le.Uint32(b[8:])}, nil
}

type request struct {
	slot   uint32
	seq    uint32
	op     uint32
	arg    int64
	inOff  uint64
	outOff uint64
	inLen  uint32
	outCap uint32
}

// Request layout (48 bytes):
//
//	0  u32 type = typeRequest
//	4  u32 slot index
//	8  u32 sequence (per slot; echoed in the completion)
//	12 u32 op (opaque)
//	16 i64 arg (opaque)
//	24 u64 input offset in the arena
//	32 u64 output offset in the arena
//	40 u32 input length
//	44 u32 output capacity
func encodeRequest(b []byte, r request) {
	_ = b[requestSize-1]
	le.PutUint32(b[0:], typeRequest)
	le.PutUint32(b[4:], r.slot)
	le.PutUint32(b[8:], r.seq)
	le.PutUint32(b[12:], r.op)
	le.PutUint64(b[16:], uint64(r.arg))
	le.PutUint64(b[24:], r.inOff)
	le.PutUint64(b[32:], r.outOff)
	le.PutUint32(b[40:], r.inLen)
	le.PutUint32(b[44:], r.outCap)
}

// decodeRequest checks the framing; geometry.checkRequest checks the
// ranges against the arena.
func decodeRequest(b []byte) (request, error) {
	if err := checkFrame(b, typeRequest, requestSize, "request"); err != nil {
		return request{}, err
	}
	return request{
		slot:   le.Uint32(b[4:]),
		seq:    le.Uint32(b[8:]),
		op:     le.Uint32(b[12:]),
		arg:    int64(le.Uint64(b[16:])),
		inOff:  le.Uint64(b[24:]),
		outOff: le.Uint64(b[32:]),
		inLen:  le.Uint32(b[40:]),
		outCap: le.Uint32(b[44:]),
	}, nil
}

type completion struct {
	slot uint32
	seq  uint32
	code uint32
	n    uint32
}

// Completion layout (24 bytes):
//
//	0  u32 type = typeCompletion
//	4  u32 slot index
//	8  u32 sequence of the request it completes
//	12 u32 code (0 = success)
//	16 u32 n: output bytes on success, error-message bytes otherwise; both
//	       start at the request's output offset
//	20 u32 reserved, zero
func encodeCompletion(b []byte, c completion) {
	_ = b[completionSize-1]
	le.PutUint32(b[0:], typeCompletion)
	le.PutUint32(b[4:], c.slot)
	le.PutUint32(b[8:], c.seq)
	le.PutUint32(b[12:], c.code)
	le.PutUint32(b[16:], c.n)
	le.PutUint32(b[20:], 0)
}

// decodeCompletion checks the framing; the client checks the id is in
// flight and n fits what was asked.
func decodeCompletion(b []byte) (completion, error) {
	if err := checkFrame(b, typeCompletion, completionSize, "completion"); err != nil {
		return completion{}, err
	}
	if le.Uint32(b[20:]) != 0 {
		return completion{}, fmt.Errorf("decode completion: %w: reserved field not zero", ErrProtocol)
	}
	return completion{
		slot: le.Uint32(b[4:]),
		seq:  le.Uint32(b[8:]),
		code: le.Uint32(b[12:]),
		n:    le.Uint32(b[16:]),
	}, nil
}

// checkFrame allocates only when it fails, so decoding on the hot path is
// allocation-free.
func checkFrame(b []byte, typ uint32, size int, what string) error {
	if len(b) != size {
		return fmt.Errorf("decode %s: %w: %d bytes, want %d", what, ErrProtocol, len(b), size)
	}
	if got := le.Uint32(b); got != typ {
		return fmt.Errorf("decode %s: %w: type %#x, want %#x", what, ErrProtocol, got, typ)
	}
	return nil
}

var le = binary.LittleEndian
