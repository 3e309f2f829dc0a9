package shm

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// errLeaseBusy: the lease's previous request was abandoned (ctx or
// timeout) and the plugin has not completed it yet.
var errLeaseBusy = errors.New("shm lease: the previous request on this slot was abandoned and is still running in the plugin")

// Lease is one slot held by one caller between TryLease and Release, so
// that the caller can write a request's input straight into the slot
// (Input) and read the output where the plugin wrote it (the slice Call
// returns), with no copy on the host. The protocol is the one Call uses:
// a lease is only a slot that stays taken across calls.
//
// A Lease is a small value; copies are the same handle. It is not safe
// for concurrent use. After Release every method refuses the handle
// (ErrLeaseReleased, or nil from Input), whatever happened to the slot
// since. The slices it handed out must not be touched after Release: the
// slot may be leased again, or the arena unmapped.
type Lease struct {
	c   *Client
	idx uint32
	gen uint32
}

// TryLease takes a free slot for the caller's exclusive use if one is free
// and fewer than ClientOptions.Leases are leased; it never waits. A caller
// that gets false does its work through Call (or another path) instead.
func (c *Client) TryLease() (Lease, bool) {
	c.leaseMu.Lock()
	defer c.leaseMu.Unlock()
	if c.down.Load() || c.leases >= c.maxLeases {
		return Lease{}, false
	}
	select {
	case <-c.free.tokens:
	default:
		return Lease{}, false
	}
	idx := c.free.pop()
	c.leases++
	s := &c.slots[idx]
	s.refs.Store(1)
	return Lease{c: c, idx: idx, gen: s.gen.Add(1)}, true
}

// slot returns the lease's slot if the handle is live.
func (l Lease) slot() (*clientSlot, bool) {
	if l.c == nil {
		return nil, false
	}
	s := &l.c.slots[l.idx]
	return s, s.gen.Load() == l.gen
}

// Input returns the slot's whole input region (len = cap = the slot's
// input size) for the caller to fill, or nil if the handle is not live.
// The plugin maps the same memory: what the caller wrote is what the
// plugin reads, and a misbehaving plugin could change it, so the caller
// must not rely on reading back exactly what it wrote once a plugin has
// seen it.
func (l Lease) Input() []byte {
	if _, ok := l.slot(); !ok {
		return nil
	}
	g := l.c.g
	off := g.inOff(l.idx)
	end := off + uint64(g.slotIn)
	return l.c.arena[off:end:end]
}

// Call runs op on the first inLen bytes of Input and returns the output,
// at most maxOut bytes, as a slice of the slot's output region: it is
// valid until the next Call on this lease or Release, and must be treated
// as read-only and untrusted (the plugin can still write there). Errors
// are those of Client.Call. If ctx ends while the request is in flight,
// the slot stays with the plugin until it completes: further Calls on
// this lease fail until then, and Release frees the slot only afterwards.
func (l Lease) Call(ctx context.Context, op uint32, arg int64, inLen, maxOut int) ([]byte, error) {
	return l.call(ctx, time.Time{}, op, arg, inLen, maxOut)
}

// CallTimeout is Call with a time limit of its own, as Client.CallTimeout.
func (l Lease) CallTimeout(ctx context.Context, timeout time.Duration, op uint32, arg int64, inLen, maxOut int) ([]byte, error) {
	return l.call(ctx, time.Now().Add(timeout), op, arg, inLen, maxOut)
}

func (l Lease) call(ctx context.Context, deadline time.Time, op uint32, arg int64, inLen, maxOut int) ([]byte, error) {
	s, ok := l.slot()
	if !ok {
		return nil, ErrLeaseReleased
	}
	c := l.c
	if inLen < 0 || inLen > int(c.g.slotIn) || maxOut < 0 || maxOut > int(c.g.slotOut) {
		return nil, fmt.Errorf("shm lease call: input %d / output %d bytes outside the slot's %d / %d", inLen, maxOut, c.g.slotIn, c.g.slotOut)
	}
	if op >= OpReserved {
		return nil, fmt.Errorf("shm lease call: op %#x is reserved for the data plane", op)
	}
	if err := l.ready(ctx); err != nil {
		return nil, err
	}
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return nil, c.deadErr
	}
	r, err := l.roundTrip(ctx, deadline, s, request{op: op, arg: arg, inLen: uint32(inLen), outCap: uint32(maxOut)})
	if err != nil {
		return nil, err
	}
	off := c.g.outOff(l.idx)
	end := off + uint64(r.n)
	out := c.mem[off:end:end]
	if r.code != 0 {
		return nil, &RemoteError{Code: r.code, Message: strings.ToValidUTF8(string(out), "\uFFFD")}
	}
	return out, nil
}

// ready refuses a call on a lease whose previous request is still with
// the plugin, or with ctx already done.
func (l Lease) ready(ctx context.Context) error {
	if l.c.slots[l.idx].abandoned.Load() {
		return errLeaseBusy
	}
	return ctx.Err()
}

// roundTrip posts r (its sequence filled in here) on the lease's slot s
// and waits for the validated completion. The caller holds the mapping
// (memMu.RLock) and has written whatever r refers to. If the wait ends
// early (ctx, deadline) the plugin may still read the input or write the
// output: the slot then needs its completion before anyone reuses it, so
// a reaper holds it until then.
func (l Lease) roundTrip(ctx context.Context, deadline time.Time, s *clientSlot, r request) (completion, error) {
	c := l.c
	s.seq++
	r.seq = s.seq
	c.post(l.idx, r)
	done, err := c.wait(ctx, deadline, s, r.outCap)
	if err != nil && !c.down.Load() {
		s.abandoned.Store(true)
		s.refs.Add(1)
		c.wg.Add(1)
		go c.reapLease(l.idx, r.outCap)
	}
	return done, err
}

// Output returns the slot's whole output region (len = cap = the slot's
// output size), where batch entries' outputs land (BatchOutput slices it
// for one entry), or nil if the handle is not live. It is shared with the
// plugin: read-only and untrusted for the caller.
func (l Lease) Output() []byte {
	if _, ok := l.slot(); !ok {
		return nil
	}
	g := l.c.g
	off := g.outOff(l.idx)
	end := off + uint64(g.slotOut)
	return l.c.arena[off:end:end]
}

// CallBatch runs several requests in the plugin with one round trip: one
// doorbell, one completion and at most one wake-up each way for the whole
// batch, where Call pays them per request. Each entry's input must already
// be in Input() at its InOff; results[i] receives entry i's outcome
// (BatchOutput turns it into the output or the error). The plugin runs the
// entries one after the other on one of its workers: a caller that wants
// the plugin's workers busy in parallel posts several batches from several
// goroutines.
//
// Entries must number 1 to MaxBatch (results at least as many), use no
// reserved op, and lie in [BatchDataOffset, slot size) of their regions.
// The error is for the batch as a whole (a dead channel, ctx, a protocol
// violation, a malformed entry); a failure of one entry is only in its
// result. If ctx ends while the batch is in flight, the lease stays busy
// until the plugin completes it, as with Call. CallBatch allocates
// nothing.
func (l Lease) CallBatch(ctx context.Context, entries []BatchEntry, results []BatchResult) error {
	return l.callBatch(ctx, time.Time{}, entries, results)
}

// CallBatchTimeout is CallBatch with a time limit of its own, as
// Client.CallTimeout.
func (l Lease) CallBatchTimeout(ctx context.Context, timeout time.Duration, entries []BatchEntry, results []BatchResult) error {
	return l.callBatch(ctx, time.Now().Add(timeout), entries, results)
}

func (l Lease) callBatch(ctx context.Context, deadline time.Time, entries []BatchEntry, results []BatchResult) error {
	s, ok := l.slot()
	if !ok {
		return ErrLeaseReleased
	}
	c := l.c
	n := len(entries)
	if n < 1 || n > MaxBatch || len(results) < n {
		return fmt.Errorf("shm batch: %d entries and %d results, want 1 to %d entries and a result for each", n, len(results), MaxBatch)
	}
	// The request covers every entry: the plugin checks each against it.
	inEnd, outEnd := uint32(BatchDataOffset), uint32(BatchDataOffset)
	for i, e := range entries {
		if err := e.check(c.g.slotIn, c.g.slotOut); err != nil {
			return fmt.Errorf("shm batch entry %d: %w", i, err)
		}
		inEnd, outEnd = max(inEnd, e.InOff+e.InLen), max(outEnd, e.OutOff+e.OutCap)
	}
	if err := l.ready(ctx); err != nil {
		return err
	}
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return c.deadErr
	}
	inBase := c.g.inOff(l.idx)
	for i, e := range entries {
		off := inBase + uint64(i)*batchEntrySize
		encodeBatchEntry(c.mem[off:off+batchEntrySize], e)
	}
	done, err := l.roundTrip(ctx, deadline, s, request{op: OpBatch, arg: int64(n), inLen: inEnd, outCap: outEnd})
	if err != nil {
		return err
	}
	if done.code != 0 || done.n != uint32(n)*batchResultSize {
		c.fail(fmt.Errorf("batch completion %d: %w: code %d, %d bytes of results for %d entries", done.seq, ErrProtocol, done.code, done.n, n))
		return c.deadErr
	}
	// Each result copied out once and checked against the host's own copy
	// of its entry, never against the table in shared memory.
	outBase := c.g.outOff(l.idx)
	for i := range n {
		var rec [batchResultSize]byte
		off := outBase + uint64(i)*batchResultSize
		copy(rec[:], c.mem[off:off+batchResultSize])
		r, err := decodeBatchResult(rec[:], entries[i])
		if err != nil {
			c.fail(fmt.Errorf("batch completion %d entry %d: %w", done.seq, i, err))
			return c.deadErr
		}
		results[i] = r
	}
	return nil
}

// BatchOutput returns entry e's output from its CallBatch result r, as a
// slice of the slot's output region (valid as Call's output is), or the
// plugin's error (a *RemoteError) if the entry failed. r must be what
// CallBatch reported for e: it was checked against e then.
func (l Lease) BatchOutput(e BatchEntry, r BatchResult) ([]byte, error) {
	out := l.Output()
	if out == nil {
		return nil, ErrLeaseReleased
	}
	if uint64(e.OutOff)+uint64(r.N) > uint64(len(out)) {
		return nil, fmt.Errorf("shm batch output: %d bytes at %d outside the %d-byte region", r.N, e.OutOff, len(out))
	}
	end := e.OutOff + r.N
	if r.Code != 0 {
		return nil, &RemoteError{Code: r.Code, Message: strings.ToValidUTF8(string(out[e.OutOff:end]), "\uFFFD")}
	}
	return out[e.OutOff:end:end], nil
}

// Release gives the slot back. It is idempotent: releasing a stale handle
// (already released) does nothing. If Close ran while leases were out,
// the last Release unmaps the arena.
func (l Lease) Release() {
	if l.c == nil {
		return
	}
	c := l.c
	s := &c.slots[l.idx]
	// One winner even if two goroutines release the same handle.
	if !s.gen.CompareAndSwap(l.gen, l.gen+1) {
		return
	}
	c.unref(l.idx)
	c.leaseMu.Lock()
	c.leases--
	var orphan []byte
	if c.leases == 0 && c.orphan != nil {
		orphan, c.orphan = c.orphan, nil
	}
	c.leaseMu.Unlock()
	if orphan != nil {
		// Nothing reaches the mapping any more: Close has stopped every
		// Call and reaper, and this was the last lease.
		_ = unix.Munmap(orphan)
	}
}

// unref drops one claim on slot idx and frees it when none is left.
func (c *Client) unref(idx uint32) {
	if c.slots[idx].refs.Add(-1) == 0 {
		c.free.put(idx)
	}
}

// reapLease waits for the plugin to complete a request a lease abandoned,
// then drops that request's claim on the slot (Release drops the
// holder's). Like reap, it is started with the mapping held, and a dead
// channel ends it without freeing anything.
func (c *Client) reapLease(idx uint32, outCap uint32) {
	defer c.wg.Done()
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return
	}
	s := &c.slots[idx]
	if _, err := c.wait(context.Background(), time.Time{}, s, outCap); err == nil {
		s.abandoned.Store(false)
		c.unref(idx)
	}
}
