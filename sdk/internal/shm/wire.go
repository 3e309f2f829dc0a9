package shm

import (
	"encoding/binary"
	"fmt"
)

// Wire format, version 4 (version 3 plus the host-wake eventfd). Kinds of
// message:
//
//   - hello and ack, one SOCK_SEQPACKET datagram each, at setup. Sizes are
//     exact: a datagram of any other length is a protocol violation. After
//     the ack nothing more travels over the socket; it stays open only so
//     that each side sees the other's exit as EOF. The hello carries the
//     memfd and, from version 4, a host-wake eventfd: the plugin wakes a
//     parked host by writing to it (a version-2/3 host sleeps on a futex
//     word in the slot's control block instead).
//   - request and completion records, written in place in the arena's
//     control area (one 64-byte block per slot) and announced through
//     futex words next to them.
//   - batch tables (version 3): a request whose op is OpBatch carries up
//     to MaxBatch sub-requests in one slot. Their entries (op, arg, and
//     the offset and length of each input and output inside the slot's
//     regions) sit at the start of the slot's input region, their results
//     (code, n) at the start of its output region; the data follows from
//     BatchDataOffset on. One doorbell and one completion, so one wake-up
//     each way, carry the whole batch.
//
// docs/dataplane.md draws the layouts.

const (
	// protocolVersion is carried in hello/ack; the host sends it and a
	// plugin answers in the host's version if it is one it speaks
	// (minProtocolVersion..protocolVersion). Version 1 carried requests
	// and completions as datagrams; version 3 added batches (OpBatch),
	// which a plugin accepts only from a version-3 host; version 4 adds
	// the host-wake eventfd (the hello's second descriptor), so that a
	// parked host waits in Go's netpoller instead of a futex syscall
	// (docs/dataplane.md, "Waking the host").
	protocolVersion    = 4
	minProtocolVersion = 2
	batchVersion       = 3
	eventfdVersion     = 4

	typeHello uint32 = 0x44570001 // "DW" + 1, host -> plugin, carries the memfd
	typeAck   uint32 = 0x44570002 // plugin -> host

	helloSize = 32
	ackSize   = 16

	// maxMessage is the receive buffer size: larger than every message so
	// that an oversized datagram shows up as a wrong length, not as a
	// silently truncated valid one.
	maxMessage = 64
)

// Control area: a 64-byte header, then one 64-byte block per slot, rounded
// up to whole pages. 64 bytes is a cache line, so two slots never share one.
//
// Header:
//
//	0  u32 doorbell: futex word; the host adds 1 after posting a request,
//	       the plugin adds 1 when it stops serving
//	4  u32 sleepers: plugin workers parked (or about to park) on doorbell
//
// Slot block:
//
//	0  u32 request sequence: the host stores it last, which posts the request
//	4  u32 op
//	8  i64 arg
//	16 u32 input length
//	20 u32 output capacity
//	24 u64 reserved, zero
//	32 u32 completion sequence: the plugin stores it last, which completes
//	       the request with that sequence
//	36 u32 code
//	40 u32 n
//	44 u32 reserved, zero
//	48 u32 host wake: futex word the host sleeps on when parked is 1; the
//	       plugin adds 1 and wakes it after a completion
//	52 u32 host parked: 0 not waiting; 1 (parkedFutex) asleep on host
//	       wake; 2 (parkedEventfd, version 4) waiting for the host-wake
//	       eventfd, which the plugin writes after a completion
//	56 u64 reserved
const (
	ctlBlock = 64

	hdrDoorbell = 0
	hdrSleepers = 4

	slotReqSeq  = 0
	slotReq     = 0 // the request record: 32 bytes from here
	slotDoneSeq = 32
	slotDone    = 32 // the completion record: 16 bytes from here
	slotWake    = 48
	slotParked  = 52

	requestSize    = 32
	completionSize = 16
)

// Values of the host parked word. Versions 2 and 3 know only 1.
const (
	parkedFutex   = 1 // asleep on the slot's host wake futex word
	parkedEventfd = 2 // version 4: waiting for the host-wake eventfd
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

// ctlSize is the control area: header plus one block per slot, in whole
// pages so that the data regions after it stay page aligned.
func (g geometry) ctlSize() uint64 {
	return (uint64(g.slots+1)*ctlBlock + pageSize - 1) &^ (pageSize - 1)
}

func (g geometry) stride() uint64 { return uint64(g.slotIn) + uint64(g.slotOut) }
func (g geometry) size() uint64   { return g.ctlSize() + uint64(g.slots)*g.stride() }

// ctlOff is where slot i's control block starts; inOff and outOff are where
// its data regions start.
func (g geometry) ctlOff(i uint32) uint64 { return uint64(i+1) * ctlBlock }
func (g geometry) inOff(i uint32) uint64  { return g.ctlSize() + uint64(i)*g.stride() }
func (g geometry) outOff(i uint32) uint64 { return g.inOff(i) + uint64(g.slotIn) }

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

// request is what the host asks of one slot. The slot's data regions are
// fixed by the geometry, so a request carries lengths, not offsets.
type request struct {
	seq    uint32
	op     uint32
	arg    int64
	inLen  uint32
	outCap uint32
}

// encodeRequest writes the request record, sequence included. The host
// writes the fields other than the sequence first and publishes with an
// atomic store of the sequence (postRequest); this encoder is the layout.
func encodeRequest(b []byte, r request) {
	_ = b[requestSize-1]
	le.PutUint32(b[0:], r.seq)
	le.PutUint32(b[4:], r.op)
	le.PutUint64(b[8:], uint64(r.arg))
	le.PutUint32(b[16:], r.inLen)
	le.PutUint32(b[20:], r.outCap)
	le.PutUint64(b[24:], 0)
}

// decodeRequest reads a request record the plugin copied out of shared
// memory and checks it against the slot's regions, so that everything the
// handler is given lies inside its own slot. want is the sequence the
// worker claimed: a record that changed while it was copied is refused.
func decodeRequest(b []byte, g geometry, want uint32) (request, error) {
	if len(b) != requestSize {
		return request{}, fmt.Errorf("decode request: %w: %d bytes, want %d", ErrProtocol, len(b), requestSize)
	}
	r := request{
		seq:    le.Uint32(b[0:]),
		op:     le.Uint32(b[4:]),
		arg:    int64(le.Uint64(b[8:])),
		inLen:  le.Uint32(b[16:]),
		outCap: le.Uint32(b[20:]),
	}
	switch {
	case r.seq != want:
		return request{}, fmt.Errorf("decode request: %w: sequence %d changed to %d while read", ErrProtocol, want, r.seq)
	case le.Uint64(b[24:]) != 0:
		return request{}, fmt.Errorf("decode request %d: %w: reserved field not zero", r.seq, ErrProtocol)
	case r.inLen > g.slotIn:
		return request{}, fmt.Errorf("decode request %d: %w: input %d bytes, slot holds %d", r.seq, ErrProtocol, r.inLen, g.slotIn)
	case r.outCap > g.slotOut:
		return request{}, fmt.Errorf("decode request %d: %w: output capacity %d bytes, slot holds %d", r.seq, ErrProtocol, r.outCap, g.slotOut)
	}
	return r, nil
}

type completion struct {
	seq  uint32
	code uint32
	n    uint32
}

// encodeCompletion writes the completion record. The plugin writes code
// and n first and publishes with an atomic store of the sequence.
func encodeCompletion(b []byte, c completion) {
	_ = b[completionSize-1]
	le.PutUint32(b[0:], c.seq)
	le.PutUint32(b[4:], c.code)
	le.PutUint32(b[8:], c.n)
	le.PutUint32(b[12:], 0)
}

// decodeCompletion reads a completion record the host copied out of shared
// memory for the request (seq, outCap) it sent. The sequence must be the
// request's; n must fit what was asked (outCap for a result, errLimit for
// an error message). Everything else is refused: the plugin is untrusted.
func decodeCompletion(b []byte, seq, outCap, errLimit uint32) (completion, error) {
	if len(b) != completionSize {
		return completion{}, fmt.Errorf("decode completion: %w: %d bytes, want %d", ErrProtocol, len(b), completionSize)
	}
	c := completion{seq: le.Uint32(b[0:]), code: le.Uint32(b[4:]), n: le.Uint32(b[8:])}
	limit := outCap
	if c.code != 0 {
		limit = errLimit
	}
	switch {
	case c.seq != seq:
		return completion{}, fmt.Errorf("decode completion: %w: sequence %d, request was %d", ErrProtocol, c.seq, seq)
	case le.Uint32(b[12:]) != 0:
		return completion{}, fmt.Errorf("decode completion %d: %w: reserved field not zero", seq, ErrProtocol)
	case c.n > limit:
		return completion{}, fmt.Errorf("decode completion %d: %w: %d bytes, at most %d allowed", seq, ErrProtocol, c.n, limit)
	}
	return c, nil
}

// Batches (version 3). The layout inside the slot:
//
//	input region:  [entry 0 | entry 1 | ... (32 bytes each)] ... BatchDataOffset: inputs
//	output region: [result 0 | result 1 | ... (8 bytes each)] ... BatchDataOffset: outputs
//
// Entry (host -> plugin, 32 bytes):
//
//	0  u32 op (below OpReserved: batches do not nest)
//	4  u32 reserved, zero
//	8  i64 arg
//	16 u32 input offset in the slot's input region (>= BatchDataOffset)
//	20 u32 input length
//	24 u32 output offset in the slot's output region (>= BatchDataOffset)
//	28 u32 output capacity
//
// Result (plugin -> host, 8 bytes):
//
//	0  u32 code: 0 success, else the handler's error code
//	4  u32 n: output bytes at the entry's output offset on success, else
//	       the bytes of the error message there (at most the entry's
//	       capacity and MaxErrorMessage)
//
// The batch request itself is an ordinary request record: op OpBatch, arg
// the entry count, input length and output capacity the end of the
// furthest entry's input and output (every entry must lie below them).
// Its completion has code 0 and n = count * 8 (the results table); a
// plugin that cannot parse the table tears the channel down, as for a bad
// request record. Offsets are relative to the slot's own regions, so no
// value a peer writes can point outside the slot.
const (
	// OpReserved: ops at or above it belong to the shm layer; Handlers
	// never see them and Call refuses them.
	OpReserved uint32 = 0xFFFF0000
	// OpBatch is the op of a batch request (arg: the entry count).
	OpBatch uint32 = 0xFFFF0001
	// MaxBatch bounds the entries of one batch.
	MaxBatch = 64
	// BatchDataOffset is where a batch's inputs and outputs may start in
	// the slot's regions: the tables come first, then whole pages of data.
	BatchDataOffset = pageSize

	batchEntrySize  = 32
	batchResultSize = 8
)

// BatchEntry is one sub-request of a batch (Lease.CallBatch): Op and Arg
// as for Call, its input at [InOff, InOff+InLen) of the slot's input
// region (Lease.Input) and room for its output at [OutOff, OutOff+OutCap)
// of the output region (Lease.Output). Offsets start at BatchDataOffset or
// later; entries should not overlap (the plugin runs them in order, so an
// output written over a later entry's input would change that input).
type BatchEntry struct {
	Op             uint32
	Arg            int64
	InOff, InLen   uint32
	OutOff, OutCap uint32
}

// BatchResult is what the plugin reported for one entry: Code 0 and N
// output bytes at the entry's OutOff, or a failure Code with an N-byte
// message there (Lease.BatchOutput turns it into a slice or an error).
type BatchResult struct {
	Code, N uint32
}

// check reports whether e is a well-formed entry whose regions lie inside
// [BatchDataOffset, inEnd) and [BatchDataOffset, outEnd). uint64 sums: no
// offset plus length can wrap.
func (e BatchEntry) check(inEnd, outEnd uint32) error {
	switch {
	case e.Op >= OpReserved:
		return fmt.Errorf("op %#x is reserved", e.Op)
	case e.InOff < BatchDataOffset || uint64(e.InOff)+uint64(e.InLen) > uint64(inEnd):
		return fmt.Errorf("input [%d, +%d) outside [%d, %d)", e.InOff, e.InLen, BatchDataOffset, inEnd)
	case e.OutOff < BatchDataOffset || uint64(e.OutOff)+uint64(e.OutCap) > uint64(outEnd):
		return fmt.Errorf("output [%d, +%d) outside [%d, %d)", e.OutOff, e.OutCap, BatchDataOffset, outEnd)
	}
	return nil
}

func encodeBatchEntry(b []byte, e BatchEntry) {
	_ = b[batchEntrySize-1]
	le.PutUint32(b[0:], e.Op)
	le.PutUint32(b[4:], 0)
	le.PutUint64(b[8:], uint64(e.Arg))
	le.PutUint32(b[16:], e.InOff)
	le.PutUint32(b[20:], e.InLen)
	le.PutUint32(b[24:], e.OutOff)
	le.PutUint32(b[28:], e.OutCap)
}

// decodeBatchEntry reads an entry the plugin copied out of shared memory
// and checks it against the batch request's input length and output
// capacity (both already checked against the slot).
func decodeBatchEntry(b []byte, inEnd, outEnd uint32) (BatchEntry, error) {
	if len(b) != batchEntrySize {
		return BatchEntry{}, fmt.Errorf("decode batch entry: %w: %d bytes, want %d", ErrProtocol, len(b), batchEntrySize)
	}
	if le.Uint32(b[4:]) != 0 {
		return BatchEntry{}, fmt.Errorf("decode batch entry: %w: reserved field not zero", ErrProtocol)
	}
	e := BatchEntry{
		Op:     le.Uint32(b[0:]),
		Arg:    int64(le.Uint64(b[8:])),
		InOff:  le.Uint32(b[16:]),
		InLen:  le.Uint32(b[20:]),
		OutOff: le.Uint32(b[24:]),
		OutCap: le.Uint32(b[28:]),
	}
	if err := e.check(inEnd, outEnd); err != nil {
		return BatchEntry{}, fmt.Errorf("decode batch entry: %w: %w", ErrProtocol, err)
	}
	return e, nil
}

func encodeBatchResult(b []byte, r BatchResult) {
	_ = b[batchResultSize-1]
	le.PutUint32(b[0:], r.Code)
	le.PutUint32(b[4:], r.N)
}

// decodeBatchResult reads a result the host copied out of shared memory
// for entry e, which the host wrote (its own copy, not the table the
// plugin could have rewritten): n must fit the entry's output capacity,
// and for an error also MaxErrorMessage.
func decodeBatchResult(b []byte, e BatchEntry) (BatchResult, error) {
	if len(b) != batchResultSize {
		return BatchResult{}, fmt.Errorf("decode batch result: %w: %d bytes, want %d", ErrProtocol, len(b), batchResultSize)
	}
	r := BatchResult{Code: le.Uint32(b[0:]), N: le.Uint32(b[4:])}
	limit := e.OutCap
	if r.Code != 0 {
		limit = min(limit, MaxErrorMessage)
	}
	if r.N > limit {
		return BatchResult{}, fmt.Errorf("decode batch result: %w: %d bytes (code %d), at most %d allowed", ErrProtocol, r.N, r.Code, limit)
	}
	return r, nil
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
