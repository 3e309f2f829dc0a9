// Package shm owns the shared-memory data plane between the DWCP host and a
// codec or accelerator plugin process: the arena of fixed slots in a sealed
// memfd that both processes map, the request and completion records in the
// arena's control area with the futex words that wake each side, the
// hello/ack handshake over a SOCK_SEQPACKET socketpair (which then only
// reports the peer's exit), and the slot lifecycle that lets many requests
// be in flight at once.
//
// It moves bytes and nothing else. It must not interpret op codes, arguments
// or error codes (the sdk/plugin layer gives them meaning), must not start or
// supervise processes, must not carry control-plane traffic (that is gRPC
// through go-plugin), and must not trust anything that arrives over the
// socket or that the peer writes into the arena: records are copied out
// once and every length and sequence is checked before memory is touched,
// and a malformed message or record tears the channel down instead of
// panicking.
//
// The host side is Client (NewClient, Call, and TryLease for a slot held
// across calls, whose input the caller fills and whose output it reads in
// place, so the host copies nothing; Lease.CallBatch runs up to MaxBatch
// requests laid out in one leased slot with one doorbell and one
// completion); the plugin side is Serve, which runs a batch's entries in
// order without waking the host in between. Leases are host-side
// bookkeeping over the same records: the plugin cannot tell a leased slot
// from any other. Pair makes
// the socketpair the host hands to the plugin at start. Only Linux has
// memfd and sealing; elsewhere NewClient and Serve return ErrUnsupported and
// callers use the chunked gRPC fallback.
package shm

import (
	"errors"
	"fmt"
)

var (
	// ErrUnsupported: this platform has no shared-memory data plane; use the
	// gRPC fallback.
	ErrUnsupported = errors.New("shm: shared-memory data plane unsupported on this platform")
	// ErrTooBig: the input or the requested output does not fit a slot; the
	// caller sends this request through the gRPC fallback instead.
	ErrTooBig = errors.New("shm: request larger than a slot")
	// ErrClosed: the channel is gone (closed locally, peer exited or crashed,
	// or torn down after a protocol violation). Every waiting and later call
	// returns an error wrapping it.
	ErrClosed = errors.New("shm: channel closed")
	// ErrProtocol: the peer sent a message that breaks the protocol (bad
	// size, type, id, offset or length). It is always reported together with
	// ErrClosed because the channel is torn down.
	ErrProtocol = errors.New("protocol violation")
	// ErrLeaseReleased: a Lease was used after its Release (or is the zero
	// Lease). The handle is stale; the slot may belong to someone else.
	ErrLeaseReleased = errors.New("shm: lease used after release")
)

// Codes at or above CodeReserved are reserved for the shm layer itself; a
// Handler must return codes below it.
const (
	CodeReserved uint32 = 0xFFFF0000
	// CodeBadHandlerResult: the plugin's Handler returned a length outside
	// its output buffer, or a reserved code; the result was discarded.
	CodeBadHandlerResult uint32 = 0xFFFF0001
)

// MaxErrorMessage bounds the text of a failed completion. The text travels
// in the slot's output region, so it costs no extra message and no copy
// over the socket.
const MaxErrorMessage = 4096

// RemoteError is a failure the plugin's Handler reported for one request.
// The channel stays usable.
type RemoteError struct {
	Code    uint32
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("shm: plugin failed request (code %d): %s", e.Code, e.Message)
}

// Handler (plugin side) computes op on in and writes at most len(out) bytes
// into out. It returns the bytes written, or a non-zero code (below
// CodeReserved) and a message. in and out point into shared memory: the
// Handler must not keep them after it returns. Handlers run concurrently on
// Serve's worker goroutines.
type Handler func(op uint32, arg int64, in, out []byte) (n int, code uint32, msg string)

// ClientOptions sizes the arena. Zero fields take the defaults; sizes are
// rounded up to whole 4 KiB pages, which Limits reports.
type ClientOptions struct {
	// Slots is how many requests can be in flight at once (default 16).
	Slots int
	// SlotInput is the largest input one request can carry (default 1 MiB).
	SlotInput int
	// SlotOutput is the largest output one request can ask for (default
	// SlotInput + SlotInput/8, room for a codec's worst-case expansion).
	SlotOutput int
	// Leases bounds how many slots TryLease hands out at once (default
	// Slots/2, at most Slots-1). The rest stay for Call, so that a caller
	// whose leases wait on a Call's result (a pipeline that holds leased
	// batches in order) can never take every slot and deadlock itself.
	Leases int
}

// maxLeases applies the Leases default and cap for a channel of slots.
func maxLeases(leases int, slots uint32) int {
	if leases <= 0 {
		leases = int(slots / 2)
	}
	return min(leases, int(slots)-1)
}

const (
	defaultSlots     = 16
	defaultSlotInput = 1 << 20
)

// geometry returns the arena layout the options describe, defaults applied.
func (o ClientOptions) geometry() (geometry, error) {
	slots, in, out := o.Slots, o.SlotInput, o.SlotOutput
	if slots == 0 {
		slots = defaultSlots
	}
	if in == 0 {
		in = defaultSlotInput
	}
	if out == 0 {
		out = in + in/8
	}
	if slots < 1 || slots > maxSlots {
		return geometry{}, fmt.Errorf("shm options: slots %d outside [1, %d]", slots, maxSlots)
	}
	if in < 1 || in > maxRegion || out < 1 || out > maxRegion {
		return geometry{}, fmt.Errorf("shm options: slot input %d / output %d outside [1, %d]", in, out, maxRegion)
	}
	return newGeometry(uint32(slots), roundPage(uint32(in)), roundPage(uint32(out)))
}

func roundPage(n uint32) uint32 {
	return (n + pageSize - 1) &^ (pageSize - 1)
}
