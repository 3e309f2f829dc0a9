package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Client is the host side of one shared-memory channel. Its methods are safe
// for concurrent use; each concurrent Call holds one slot.
type Client struct {
	conn *net.UnixConn
	g    geometry

	// memMu keeps the mapping alive while anything reads or writes it:
	// Calls and reapers hold it shared for their whole life, Close takes it
	// exclusively, sets mem to nil and unmaps (or leaves that to the last
	// lease, see leaseMu).
	memMu sync.RWMutex
	mem   []byte
	// arena is the whole mapping, never changed after NewClient. Leases
	// hand out slices of it: they stay valid after Close until the last
	// lease is released, because the unmap waits for that.
	arena []byte

	// leaseMu guards the lease count and the unmap that Close left to the
	// last Release. A lease holds no lock while its holder fills its
	// input, so Close cannot wait for it: it moves the mapping to orphan
	// instead, and the Release that brings leases to 0 unmaps it.
	leaseMu   sync.Mutex
	leases    int
	maxLeases int
	orphan    []byte

	doorbell *uint32 // header words, see wire.go
	sleepers *uint32

	slots []clientSlot
	free  freeList

	dead    chan struct{} // closed when the channel is torn down
	deadErr error         // why; written once before dead is closed
	down    atomic.Bool   // set with dead, readable without a select
	failed  sync.Once

	wg sync.WaitGroup // the socket watcher and the reapers
}

// clientSlot holds pointers to one slot's shared words and the sequence of
// its last request. The sequence is host-private: it is what a completion
// must echo, whatever the plugin writes.
type clientSlot struct {
	seq    uint32
	reqSeq *uint32 // request sequence (host stores it to post)
	done   []byte  // the completion record, completionSize bytes
	doneSq *uint32 // completion sequence (plugin stores it to complete)
	wake   *uint32 // the host sleeps on it
	parked *uint32 // 1 while the host may sleep on wake

	// Lease bookkeeping (host-private, like seq). gen changes at every
	// TryLease and Release of the slot, so a Lease handle is live only
	// while it holds the current gen: a stale handle is refused, never
	// mistaken for the slot's next holder. refs counts who still needs
	// the slot (the lease holder, and a request it abandoned until the
	// plugin completes it); the slot is freed when it drops to 0.
	// abandoned is set while such a request is in flight.
	gen       atomic.Uint32
	refs      atomic.Int32
	abandoned atomic.Bool
}

// freeList hands out free slots most recently used first, so that a lightly
// loaded channel keeps reusing the same slot, whose regions are still in
// the CPU caches, rather than cycling through the whole arena. tokens
// counts the entries of stack, so a caller can wait for one in a select.
type freeList struct {
	mu     sync.Mutex
	stack  []uint32
	tokens chan struct{}
}

func (f *freeList) put(i uint32) {
	f.mu.Lock()
	f.stack = append(f.stack, i)
	f.mu.Unlock()
	f.tokens <- struct{}{}
}

// pop is called after taking a token, so the stack is not empty.
func (f *freeList) pop() uint32 {
	f.mu.Lock()
	i := f.stack[len(f.stack)-1]
	f.stack = f.stack[:len(f.stack)-1]
	f.mu.Unlock()
	return i
}

var (
	errLocalClose = errors.New("closed by host")
	errPeerClosed = errors.New("plugin closed the socket (exited or crashed)")
	// aLongTimeAgo is a read deadline that has already passed: setting it
	// wakes a blocked read.
	aLongTimeAgo = time.Unix(1, 0)
)

// Waiting for a completion: spin this many times reading the completion
// sequence before parking on the futex. A spin is a few nanoseconds; the
// point is only to catch a plugin that answers within a microsecond or so,
// without a syscall. Spinning longer costs the plugin CPU on a small
// machine (the benchmarks in docs/dataplane.md chose it).
const spinReads = 64

// pollCancel bounds each futex sleep when ctx can be cancelled: a futex
// cannot wait on a channel, so a cancelled ctx is noticed at the next
// wake-up, at most this long after. Deadlines need no polling (the sleep
// ends at the deadline) and neither does a dead channel (teardown wakes
// every sleeper).
const pollCancel = 2 * time.Millisecond

// NewClient creates the arena described by opts, sends it to the plugin over
// conn and waits, bounded by ctx, until the plugin has mapped it. NewClient
// takes ownership of conn: it is closed when the Client closes, or before
// NewClient returns an error.
func NewClient(ctx context.Context, conn *os.File, opts ClientOptions) (*Client, error) {
	g, err := opts.geometry()
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		return nil, err
	}
	uc, err := seqpacketConn(conn)
	if err != nil {
		return nil, fmt.Errorf("shm client: %w", err)
	}
	mem, err := handshake(ctx, uc, g)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("shm client: %w", err)
	}
	c := &Client{
		conn:      uc,
		g:         g,
		mem:       mem,
		arena:     mem,
		maxLeases: maxLeases(opts.Leases, g.slots),
		doorbell:  word(mem, hdrDoorbell),
		sleepers:  word(mem, hdrSleepers),
		slots:     make([]clientSlot, g.slots),
		free:      freeList{stack: make([]uint32, 0, g.slots), tokens: make(chan struct{}, g.slots)},
		dead:      make(chan struct{}),
	}
	// Push in reverse so that slot 0 is handed out first.
	for i := range g.slots {
		idx := g.slots - 1 - i
		ctl := g.ctlOff(idx)
		c.slots[idx] = clientSlot{
			reqSeq: word(mem, ctl+slotReqSeq),
			done:   mem[ctl+slotDone : ctl+slotDone+completionSize : ctl+slotDone+completionSize],
			doneSq: word(mem, ctl+slotDoneSeq),
			wake:   word(mem, ctl+slotWake),
			parked: word(mem, ctl+slotParked),
		}
		c.free.put(idx)
	}
	c.wg.Add(1)
	go c.watch()
	return c, nil
}

// handshake sends the hello with the memfd and waits for the plugin's ack.
func handshake(ctx context.Context, uc *net.UnixConn, g geometry) ([]byte, error) {
	fd, mem, err := createArena(g)
	if err != nil {
		return nil, err
	}
	var msg [maxMessage]byte
	encodeHello(msg[:], hello{version: protocolVersion, geometry: g, arenaSize: g.size()})
	_, _, err = uc.WriteMsgUnix(msg[:helloSize], unix.UnixRights(fd), nil)
	// The descriptor in flight holds its own reference; ours is no longer
	// needed, and the mapping keeps the memory.
	unix.Close(fd)
	if err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("send hello: %w", err)
	}

	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		uc.SetReadDeadline(aLongTimeAgo)
		close(fired)
	})
	n, err := uc.Read(msg[:])
	if !stop() {
		<-fired
	}
	if err == nil {
		err = uc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		unix.Munmap(mem)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for ack: %w", ctx.Err())
		}
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("wait for ack: %w: %w", ErrClosed, errPeerClosed)
		}
		return nil, fmt.Errorf("wait for ack: %w", err)
	}
	a, err := decodeAck(msg[:n])
	if err == nil && a.status != ackOK {
		err = fmt.Errorf("plugin refused the arena: %s", ackStatusText(a.status))
	} else if err == nil && a.version != protocolVersion {
		err = fmt.Errorf("ack: %w: version %d, want %d", ErrProtocol, a.version, protocolVersion)
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return mem, nil
}

// Done is closed when the channel is torn down for any reason, so that a
// supervisor notices a dead plugin without waiting for a Call to fail.
func (c *Client) Done() <-chan struct{} { return c.dead }

// Err is nil while the channel is up; afterwards it says why it went down
// (it wraps ErrClosed, and ErrProtocol if the plugin broke the protocol).
func (c *Client) Err() error {
	select {
	case <-c.dead:
		return c.deadErr
	default:
		return nil
	}
}

// Limits reports the largest input and output one Call can carry.
func (c *Client) Limits() (maxIn, maxOut int) {
	return int(c.g.slotIn), int(c.g.slotOut)
}

// Call runs op on in in the plugin and appends its output, at most maxOut
// bytes, to dst. It waits for a free slot and for the completion, both
// bounded by ctx. If len(in) or maxOut exceeds Limits it returns ErrTooBig
// at once and sends nothing. A failure the plugin reports is a *RemoteError;
// a dead channel gives an error wrapping ErrClosed. If ctx ends while the
// request is in flight Call returns ctx.Err(), but the slot stays reserved
// until the plugin completes it, because the plugin may still be writing
// into it. While the plugin works, a cancelled ctx is noticed within
// pollCancel (2 ms); a deadline is exact.
func (c *Client) Call(ctx context.Context, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	return c.call(ctx, time.Time{}, op, arg, in, dst, maxOut)
}

// CallTimeout is Call with a time limit of its own on top of ctx's. It
// costs nothing per call, where wrapping ctx in context.WithTimeout costs a
// timer and allocations: the limit is simply the futex sleep's timeout.
// When it expires CallTimeout returns an error wrapping
// context.DeadlineExceeded, with the same slot rules as a cancelled ctx.
func (c *Client) CallTimeout(ctx context.Context, timeout time.Duration, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	return c.call(ctx, time.Now().Add(timeout), op, arg, in, dst, maxOut)
}

func (c *Client) call(ctx context.Context, deadline time.Time, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	if maxOut < 0 {
		return dst, fmt.Errorf("shm call: negative maxOut %d", maxOut)
	}
	if op >= OpReserved {
		return dst, fmt.Errorf("shm call: op %#x is reserved for the data plane", op)
	}
	if len(in) > int(c.g.slotIn) || maxOut > int(c.g.slotOut) {
		return dst, ErrTooBig
	}
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	select {
	case <-c.free.tokens:
	case <-c.dead:
		return dst, c.deadErr
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	idx := c.free.pop()

	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return dst, c.deadErr
	}
	s := &c.slots[idx]
	copy(c.mem[c.g.inOff(idx):], in)
	s.seq++
	c.post(idx, request{seq: s.seq, op: op, arg: arg, inLen: uint32(len(in)), outCap: uint32(maxOut)})

	r, err := c.wait(ctx, deadline, s, uint32(maxOut))
	if err != nil {
		if !c.down.Load() {
			// The plugin may still read the input or write the output:
			// the slot is freed only once it completes (reap).
			c.wg.Add(1)
			go c.reap(idx, uint32(maxOut))
		}
		return dst, err
	}
	out := c.mem[c.g.outOff(idx):][:r.n]
	if r.code == 0 {
		dst = append(dst, out...)
	} else {
		err = &RemoteError{Code: r.code, Message: strings.ToValidUTF8(string(out), "\uFFFD")}
	}
	c.free.put(idx)
	return dst, err
}

// post writes the request record into slot idx's control block and rings
// the doorbell. The sequence is stored last and atomically: a worker that
// sees it also sees the fields written before it. The futex wake (a
// syscall) is skipped while no worker is parked: a worker about to park
// counts itself in sleepers first and then looks for work once more, so a
// request posted in between is found either way.
func (c *Client) post(idx uint32, r request) {
	var rec [requestSize]byte
	encodeRequest(rec[:], r)
	// Everything but the sequence (the record's first word) with plain
	// stores, then the sequence atomically: a worker that sees the new
	// sequence must not find a field of the previous request.
	ctl := c.g.ctlOff(idx)
	copy(c.mem[ctl+slotReq+4:ctl+slotReq+requestSize], rec[4:])
	atomic.StoreUint32(c.slots[idx].reqSeq, r.seq)
	atomic.AddUint32(c.doorbell, 1)
	if atomic.LoadUint32(c.sleepers) != 0 {
		futexWakeN(c.doorbell, 1)
	}
}

// wait returns the validated completion of slot s's current request, or an
// error if the channel dies (ErrClosed), the plugin breaks the protocol
// (ErrClosed and ErrProtocol; the channel is torn down), ctx ends or the
// deadline passes. Memory must be held (memMu.RLock) by the caller.
func (c *Client) wait(ctx context.Context, deadline time.Time, s *clientSlot, outCap uint32) (completion, error) {
	for range spinReads {
		if atomic.LoadUint32(s.doneSq) == s.seq {
			return c.completion(s, outCap)
		}
	}
	for {
		// Parking protocol, the mirror of post's: announce, then re-check,
		// then sleep on the value read before the re-check. The plugin
		// stores the completion sequence before it reads parked, so either
		// we see the completion here or it sees parked and bumps wake,
		// which makes the sleep below return at once.
		atomic.StoreUint32(s.parked, 1)
		w := atomic.LoadUint32(s.wake)
		switch d := atomic.LoadUint32(s.doneSq); d {
		case s.seq:
			atomic.StoreUint32(s.parked, 0)
			return c.completion(s, outCap)
		case s.seq - 1:
			// Still the previous request's: not done yet.
		default:
			err := fmt.Errorf("completion: %w: sequence %d is neither the request's (%d) nor the one before", ErrProtocol, d, s.seq)
			c.fail(err)
			return completion{}, c.deadErr
		}
		if c.down.Load() {
			return completion{}, c.deadErr
		}
		if err := ctx.Err(); err != nil {
			return completion{}, err
		}
		var d time.Duration
		if !deadline.IsZero() {
			if d = time.Until(deadline); d <= 0 {
				return completion{}, fmt.Errorf("shm call: %w", context.DeadlineExceeded)
			}
		}
		if ctx.Done() != nil && (d == 0 || d > pollCancel) {
			d = pollCancel
		}
		futexSleep(s.wake, w, d)
	}
}

// completion reads the completion record of s's request out of shared
// memory once, into a local copy, and validates the copy: the plugin may
// rewrite the record at any time, but the copy cannot change under us.
func (c *Client) completion(s *clientSlot, outCap uint32) (completion, error) {
	var rec [completionSize]byte
	copy(rec[:], s.done)
	r, err := decodeCompletion(rec[:], s.seq, outCap, min(MaxErrorMessage, c.g.slotOut))
	if err != nil {
		c.fail(err)
		return completion{}, c.deadErr
	}
	return r, nil
}

// reap waits, with no time limit, for the plugin to complete an abandoned
// request, then frees its slot. A dead channel ends it without freeing
// anything: the slot is never used again. It is started with the mapping
// held by the abandoning Call, so Close (which takes memMu exclusively
// before it waits for c.wg) cannot miss it.
func (c *Client) reap(idx uint32, outCap uint32) {
	defer c.wg.Done()
	c.memMu.RLock()
	defer c.memMu.RUnlock()
	if c.mem == nil {
		return
	}
	if _, err := c.wait(context.Background(), time.Time{}, &c.slots[idx], outCap); err == nil {
		c.free.put(idx)
	}
}

// watch reads the socket, on which a well-behaved plugin sends nothing
// after the ack: it is there to notice the plugin's exit (EOF) at once.
func (c *Client) watch() {
	defer c.wg.Done()
	var buf [maxMessage]byte
	n, err := c.conn.Read(buf[:])
	switch {
	case err == nil:
		err = fmt.Errorf("socket: %w: unexpected %d-byte message after the ack", ErrProtocol, n)
	case errors.Is(err, io.EOF):
		err = errPeerClosed
	default:
		err = fmt.Errorf("socket: %w", err)
	}
	c.fail(err)
}

// fail tears the channel down once: every waiting and later Call returns an
// error wrapping ErrClosed and cause.
func (c *Client) fail(cause error) {
	c.failed.Do(func() {
		c.deadErr = fmt.Errorf("%w: %w", ErrClosed, cause)
		c.down.Store(true)
		close(c.dead)
		c.conn.Close()
		// Every caller that read down as false before the store above has
		// read its wake word even earlier, so this bump ends its sleep.
		// fail runs with the mapping held: by a Call or a reaper, by the
		// watcher (Close waits for it before unmapping), or by Close
		// itself before it unmaps.
		for i := range c.slots {
			bump(c.slots[i].wake, math.MaxInt32)
		}
	})
}

// Close tears the channel down (the plugin's Serve sees the socket close),
// wakes every waiting Call (they return an error wrapping ErrClosed), unmaps
// the arena once none of them touches it any more, and waits for the
// watcher and reapers.
func (c *Client) Close() error {
	c.fail(errLocalClose)
	c.memMu.Lock()
	var err error
	if c.mem != nil {
		c.mem = nil
		c.leaseMu.Lock()
		if c.leases == 0 {
			err = unix.Munmap(c.arena)
		} else {
			// Holders may still be writing into their inputs: the last
			// Release unmaps.
			c.orphan = c.arena
		}
		c.leaseMu.Unlock()
	}
	c.memMu.Unlock()
	// Reapers are started only with the mapping held, so all of them were
	// started before the Lock above returned: none is added after this.
	c.wg.Wait()
	if err != nil {
		return fmt.Errorf("shm close: unmap arena: %w", err)
	}
	return nil
}
