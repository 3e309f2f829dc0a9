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
	if s.abandoned.Load() {
		return nil, errLeaseBusy
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return nil, c.deadErr
	}
	s.seq++
	c.post(l.idx, request{seq: s.seq, op: op, arg: arg, inLen: uint32(inLen), outCap: uint32(maxOut)})
	r, err := c.wait(ctx, deadline, s, uint32(maxOut))
	if err != nil {
		if !c.down.Load() {
			// The plugin may still read the input or write the output:
			// the slot needs its completion before anyone reuses it.
			s.abandoned.Store(true)
			s.refs.Add(1)
			c.wg.Add(1)
			go c.reapLease(l.idx, uint32(maxOut))
		}
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
