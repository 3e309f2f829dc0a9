package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

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

	// The host-wake eventfd (version 4): the plugin writes it after a
	// completion whose caller parked; dispatch reads it through the
	// netpoller and signals the parked callers. readWakeFn is readWake
	// as a func value, made once so that dispatch allocates nothing;
	// wakeBuf and wakeErr belong to dispatch.
	wake       *os.File
	wakeConn   syscall.RawConn
	readWakeFn func(fd uintptr) bool
	wakeBuf    [8]byte
	wakeErr    error
	// shortHits is how often (out of hitScale, a 1/8 moving average) a
	// wait's short futex phase caught the completion; waits counts waits,
	// so that every shortProbe-th one tries the short phase anyway (see
	// wait).
	shortHits atomic.Int32
	waits     atomic.Uint32
	// missedWakes counts parked waits that a recheck, not a wake-up,
	// found complete (see wait); MissedWakes reports it.
	missedWakes atomic.Uint64

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
	wake   *uint32 // the futex word of a short wait (parkedFutex)
	parked *uint32 // parkedFutex or parkedEventfd while the host may be asleep

	// Parking (host-private). waiting is parkedFor(seq) while a caller
	// (or reaper) is parked on signal for request seq, 0 otherwise;
	// dispatch reads it to find whom a host-wake is for. signal holds
	// at most one token: a stale one only makes the next wait look once
	// more. timer bounds a wait with a deadline (made once, reused).
	waiting atomic.Uint64
	signal  chan struct{}
	timer   *time.Timer
	// recheck wakes a parked wait every recheckEvery (see wait).
	recheck *time.Timer

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
// sequence before parking. A spin is a few nanoseconds; the point is only
// to catch a plugin that answers within a microsecond or so, without
// parking. Spinning longer costs the plugin CPU on a small machine (the
// benchmarks in docs/dataplane.md chose it).
const spinReads = 64

// parkedFor is the waiting word of a slot whose caller waits for request
// seq: never 0, so 0 can mean "nobody".
func parkedFor(seq uint32) uint64 { return 1<<32 | uint64(seq) }

// A wait first sleeps on the slot's futex word for at most rawSleep, with
// a raw syscall that keeps the P, while that short phase has been
// catching completions: for a 4 KiB call that answers in tens of µs,
// parking a goroutine and waking it through the netpoller and the
// dispatcher costs more CPU than one futex sleep (measured: 1.5-3x the
// plugin path's CPU ratio on 4 KiB calls without the short phase). The
// bound keeps the P from other goroutines for at most rawSleep plus the
// kernel's timer slack (50 µs by default), and sysmon never sees a
// syscall to retake. Calls with at most smallOut bytes of output room
// (a page or so) always try it. Larger ones try it while its hit rate is
// at least shortMin (1/16): long calls (1 MiB, batches) miss it, the rate
// falls and they go straight to the netpoller, except every shortProbe-th
// wait, which tries again (so the rate recovers when calls get short
// again) at the cost of one extra wake-up; a miss costs one wake-up (the
// timeout) more than going to the netpoller directly.
const (
	rawSleep   = 50 * time.Microsecond
	smallOut   = 16 << 10
	hitScale   = 1024
	shortMin   = hitScale / 16
	shortProbe = 16
)

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
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("shm client: host-wake eventfd: %w", err)
	}
	mem, err := handshake(ctx, uc, g, efd)
	if err != nil {
		unix.Close(efd)
		uc.Close()
		return nil, fmt.Errorf("shm client: %w", err)
	}
	// Non-blocking, so os.NewFile registers it with the netpoller.
	wake := os.NewFile(uintptr(efd), "dwcp-shm-wake")
	wakeConn, err := wake.SyscallConn()
	if err != nil {
		wake.Close()
		unix.Munmap(mem)
		uc.Close()
		return nil, fmt.Errorf("shm client: host-wake eventfd: %w", err)
	}
	c := &Client{
		wake:      wake,
		wakeConn:  wakeConn,
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
		timer := time.NewTimer(time.Hour)
		timer.Stop()
		recheck := time.NewTimer(time.Hour)
		recheck.Stop()
		c.slots[idx] = clientSlot{
			reqSeq:  word(mem, ctl+slotReqSeq),
			done:    mem[ctl+slotDone : ctl+slotDone+completionSize : ctl+slotDone+completionSize],
			doneSq:  word(mem, ctl+slotDoneSeq),
			wake:    word(mem, ctl+slotWake),
			parked:  word(mem, ctl+slotParked),
			signal:  make(chan struct{}, 1),
			timer:   timer,
			recheck: recheck,
		}
		c.free.put(idx)
	}
	c.readWakeFn = c.readWake
	c.shortHits.Store(hitScale) // optimistic: the first waits try the short phase
	c.wg.Add(2)
	go c.watch()
	go c.dispatch()
	return c, nil
}

// handshake sends the hello with the memfd and the host-wake eventfd efd
// (which stays the caller's) and waits for the plugin's ack.
func handshake(ctx context.Context, uc *net.UnixConn, g geometry, efd int) ([]byte, error) {
	fd, mem, err := createArena(g)
	if err != nil {
		return nil, err
	}
	var msg [maxMessage]byte
	encodeHello(msg[:], hello{version: protocolVersion, geometry: g, arenaSize: g.size()})
	_, _, err = uc.WriteMsgUnix(msg[:helloSize], unix.UnixRights(fd, efd), nil)
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
// request posted in between is found either way. The wake is a raw
// syscall: it never blocks, and going through the runtime's syscall
// bookkeeping would only wake sysmon (see wait).
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
//
// After a short spin, and a short raw futex sleep when that pays (see
// rawSleep), it parks the goroutine, not the thread: the plugin's wake-up
// arrives on the host-wake eventfd, which dispatch reads through Go's
// netpoller and turns into a token on s.signal. A thread asleep in a futex syscall
// instead keeps its P in the syscall state; when every P is busy or in
// such a syscall (GOMAXPROCS callers waiting on the plugin), sysmon
// retakes one after 20 µs, and every retake makes sysmon poll again at
// 20 µs. On this 2-vCPU VM that polling cost 4-5 sysmon wake-ups per
// 1 MiB call, ~10 % of the plugin path's CPU (docs/dataplane.md, "Waking
// the host"). A goroutine parked in the netpoller leaves its P idle and
// sysmon asleep.
func (c *Client) wait(ctx context.Context, deadline time.Time, s *clientSlot, outCap uint32) (completion, error) {
	for range spinReads {
		if atomic.LoadUint32(s.doneSq) == s.seq {
			return c.completion(s, outCap)
		}
	}
	if (outCap <= smallOut || c.shortHits.Load() >= shortMin || c.waits.Add(1)%shortProbe == 0) &&
		ctx.Err() == nil && (deadline.IsZero() || time.Until(deadline) > rawSleep) {
		// The same announce / re-check / sleep as below, on the futex
		// word: the plugin bumps it when parked says parkedFutex.
		atomic.StoreUint32(s.parked, parkedFutex)
		w := atomic.LoadUint32(s.wake)
		done, err := c.check(s)
		if !done && err == nil {
			futexSleepRaw(s.wake, w, rawSleep)
			done, err = c.check(s)
		}
		h := c.shortHits.Load()
		if done {
			c.shortHits.Store(h + (hitScale-h)/8)
		} else {
			c.shortHits.Store(h - (h+7)/8)
		}
		if done || err != nil {
			return c.finish(s, outCap, err)
		}
	}
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		d := time.Until(deadline)
		if d <= 0 {
			return completion{}, fmt.Errorf("shm call: %w", context.DeadlineExceeded)
		}
		s.timer.Reset(d)
		defer s.timer.Stop()
		timeout = s.timer.C
	}
	defer s.waiting.Store(0)
	// A parked wait also looks again every recheckEvery, and rings the
	// doorbell when the request is still not complete: a completion whose
	// wake-up got lost, or a request no worker noticed, then costs that
	// long rather than the call's whole timeout. The protocol above is
	// meant to make both impossible; a CI run under -race once saw a 1-byte
	// call wait out its 60 s timeout, cause not found, so the safety net
	// stays and MissedWakes counts what it catches.
	s.recheck.Reset(recheckEvery)
	defer s.recheck.Stop()
	for {
		// Parking protocol: announce (waiting for dispatch, parked for
		// the plugin), then re-check, then park. The plugin stores the
		// completion sequence before it reads parked, so either we see
		// the completion here or it sees parked and writes the eventfd
		// after its store; dispatch reads the eventfd, then the
		// sequence, and signals us.
		s.waiting.Store(parkedFor(s.seq))
		atomic.StoreUint32(s.parked, parkedEventfd)
		if done, err := c.check(s); done || err != nil {
			return c.finish(s, outCap, err)
		}
		if c.down.Load() {
			return completion{}, c.deadErr
		}
		select {
		case <-s.signal:
		case <-s.recheck.C:
			if done, err := c.check(s); done || err != nil {
				if done {
					c.missedWakes.Add(1)
				}
				return c.finish(s, outCap, err)
			}
			futexWakeN(c.doorbell, 1)
			s.recheck.Reset(recheckEvery)
		case <-c.dead:
			return completion{}, c.deadErr
		case <-ctx.Done():
			return completion{}, ctx.Err()
		case <-timeout:
			return completion{}, fmt.Errorf("shm call: %w", context.DeadlineExceeded)
		}
	}
}

// recheckEvery is how often a parked wait looks at its slot without being
// woken (see wait): long against any call's wake-up path, short against
// a call's timeout.
const recheckEvery = 250 * time.Millisecond

// MissedWakes is how many parked waits found their completion only when
// they looked again on their own (recheckEvery): 0 unless a wake-up was
// lost somewhere.
func (c *Client) MissedWakes() uint64 { return c.missedWakes.Load() }

// check reports whether slot s's request is complete, after the caller
// announced that it may sleep. A completion sequence that is neither the
// request's nor the one before is a protocol violation: the channel is
// torn down and the error returned.
func (c *Client) check(s *clientSlot) (bool, error) {
	switch d := atomic.LoadUint32(s.doneSq); d {
	case s.seq:
		return true, nil
	case s.seq - 1:
		return false, nil // still the previous request's: not done yet
	default:
		c.fail(fmt.Errorf("completion: %w: sequence %d is neither the request's (%d) nor the one before", ErrProtocol, d, s.seq))
		return false, c.deadErr
	}
}

// finish ends a wait that parked: it clears parked and reads the
// completion (or passes err on).
func (c *Client) finish(s *clientSlot, outCap uint32, err error) (completion, error) {
	if err != nil {
		return completion{}, err
	}
	atomic.StoreUint32(s.parked, 0)
	return c.completion(s, outCap)
}

// dispatch turns host-wakes into signals. It waits for the eventfd to be
// readable in the netpoller (RawConn.Read parks the goroutine while
// readWake reports EAGAIN), then signals every parked caller whose
// completion sequence has moved on from the one before its request (its
// own completion, or garbage for its wait to report). One read takes all
// the wake-ups written since the last (an eventfd is a counter). It ends
// when the channel is torn down (fail closes the eventfd).
func (c *Client) dispatch() {
	defer c.wg.Done()
	for {
		err := c.wakeConn.Read(c.readWakeFn)
		if err == nil {
			err = c.wakeErr
		}
		if err != nil {
			if !c.down.Load() {
				c.fail(fmt.Errorf("host-wake eventfd: %w", err))
			}
			return
		}
		c.memMu.RLock()
		if c.mem != nil {
			for i := range c.slots {
				s := &c.slots[i]
				w := s.waiting.Load()
				if w != 0 && atomic.LoadUint32(s.doneSq) != uint32(w)-1 {
					select {
					case s.signal <- struct{}{}:
					default:
					}
				}
			}
		}
		c.memMu.RUnlock()
	}
}

// readWake reads (and so resets) the eventfd's counter: true when it did,
// or on an error (kept in wakeErr), false when there was nothing to read
// (EAGAIN), which makes RawConn.Read wait for the next write. A raw
// syscall: the read never blocks, and the runtime's syscall entry would
// wake a sleeping sysmon.
func (c *Client) readWake(fd uintptr) bool {
	for {
		_, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.wakeBuf[0])), uintptr(len(c.wakeBuf)))
		switch e {
		case 0:
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.wakeErr = e
		return true
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
		// Closing dead wakes every parked caller; closing the eventfd
		// ends dispatch.
		close(c.dead)
		c.conn.Close()
		c.wake.Close()
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
