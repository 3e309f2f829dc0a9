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
	"time"

	"golang.org/x/sys/unix"
)

// Slot states. A slot leaves slotFree only through the free list and
// returns to it only once no process can still touch its memory: after the
// completion has been consumed, never on a cancelled caller's say-so.
const (
	slotFree      uint32 = iota
	slotWaiting          // request sent, caller waiting for the completion
	slotAbandoned        // caller gave up (ctx); the reader frees it on completion
	slotDone             // completion handed to the waiting caller
)

// Client is the host side of one shared-memory channel. Its methods are safe
// for concurrent use; each concurrent Call holds one slot.
type Client struct {
	conn *net.UnixConn
	g    geometry

	// memMu keeps the mapping alive while a Call copies through it: Calls
	// hold it shared around their copies, Close exclusively to unmap.
	memMu sync.RWMutex
	mem   []byte

	slots []clientSlot
	// free holds the index of every free slot; its capacity is the slot
	// count, so returning a slot never blocks.
	free chan uint32

	dead    chan struct{} // closed when the channel is torn down
	deadErr error         // why; written once before dead is closed
	failed  sync.Once

	wg sync.WaitGroup // the completion reader
}

// clientSlot is a slot's bookkeeping and doubles as the pooled waiter, so a
// Call needs no allocation: its request buffer and completion channel live
// here for the life of the Client.
type clientSlot struct {
	state  atomic.Uint32
	seq    atomic.Uint32
	outCap uint32 // of the request in flight; published by state
	done   chan completion
	req    [requestSize]byte
}

var (
	errLocalClose = errors.New("closed by host")
	errPeerClosed = errors.New("plugin closed the socket (exited or crashed)")
	// aLongTimeAgo is a read deadline that has already passed: setting it
	// wakes a blocked read.
	aLongTimeAgo = time.Unix(1, 0)
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
	mem, err := handshake(ctx, uc, g)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("shm client: %w", err)
	}
	c := &Client{
		conn:  uc,
		g:     g,
		mem:   mem,
		slots: make([]clientSlot, g.slots),
		free:  make(chan uint32, g.slots),
		dead:  make(chan struct{}),
	}
	for i := range c.slots {
		c.slots[i].done = make(chan completion, 1)
		c.free <- uint32(i)
	}
	c.wg.Add(1)
	go c.readLoop()
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
// into it.
func (c *Client) Call(ctx context.Context, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	if maxOut < 0 {
		return dst, fmt.Errorf("shm call: negative maxOut %d", maxOut)
	}
	if len(in) > int(c.g.slotIn) || maxOut > int(c.g.slotOut) {
		return dst, ErrTooBig
	}
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	var idx uint32
	select {
	case idx = <-c.free:
	case <-c.dead:
		return dst, c.deadErr
	case <-ctx.Done():
		return dst, ctx.Err()
	}
	s := &c.slots[idx]
	inOff, outOff := c.g.inOff(idx), c.g.outOff(idx)

	c.memMu.RLock()
	if c.mem == nil {
		c.memMu.RUnlock()
		return dst, c.deadErr
	}
	copy(c.mem[inOff:], in)
	c.memMu.RUnlock()

	s.outCap = uint32(maxOut)
	seq := s.seq.Add(1)
	encodeRequest(s.req[:], request{
		slot: idx, seq: seq, op: op, arg: arg,
		inOff: inOff, outOff: outOff, inLen: uint32(len(in)), outCap: uint32(maxOut),
	})
	s.state.Store(slotWaiting)
	if _, err := c.conn.Write(s.req[:]); err != nil {
		// The slot stays reserved: the channel is dead and never reused.
		c.fail(fmt.Errorf("send request: %w", err))
		return dst, c.deadErr
	}

	select {
	case r := <-s.done:
		return c.finish(idx, r, dst)
	case <-c.dead:
		// A completion delivered before the channel died is still a
		// valid result; select picks randomly when both are ready.
		select {
		case r := <-s.done:
			return c.finish(idx, r, dst)
		default:
			return dst, c.deadErr
		}
	case <-ctx.Done():
		if s.state.CompareAndSwap(slotWaiting, slotAbandoned) {
			return dst, ctx.Err()
		}
		// The completion won the race: the reader has moved the slot to
		// slotDone and is handing the result over right now.
		return c.finish(idx, <-s.done, dst)
	}
}

// finish consumes a completion the reader has validated and frees the slot.
func (c *Client) finish(idx uint32, r completion, dst []byte) ([]byte, error) {
	off := c.g.outOff(idx)
	var rerr error
	c.memMu.RLock()
	if c.mem == nil {
		c.memMu.RUnlock()
		return dst, c.deadErr
	}
	out := c.mem[off : off+uint64(r.n)]
	if r.code == 0 {
		dst = append(dst, out...)
	} else {
		rerr = &RemoteError{Code: r.code, Message: strings.ToValidUTF8(string(out), "\uFFFD")}
	}
	c.memMu.RUnlock()
	c.slots[idx].state.Store(slotFree)
	c.free <- idx
	return dst, rerr
}

// readLoop owns the receive side: it validates every completion before it
// wakes a caller, and tears the channel down on the first bad one.
func (c *Client) readLoop() {
	defer c.wg.Done()
	var buf [maxMessage]byte
	for {
		n, err := c.conn.Read(buf[:])
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errPeerClosed
			} else {
				err = fmt.Errorf("receive completion: %w", err)
			}
			c.fail(err)
			return
		}
		r, err := decodeCompletion(buf[:n])
		if err == nil {
			err = c.complete(r)
		}
		if err != nil {
			c.fail(err)
			return
		}
	}
}

func (c *Client) complete(r completion) error {
	if r.slot >= c.g.slots {
		return fmt.Errorf("completion slot %d: %w: only %d slots", r.slot, ErrProtocol, c.g.slots)
	}
	s := &c.slots[r.slot]
	st := s.state.Load()
	if (st != slotWaiting && st != slotAbandoned) || s.seq.Load() != r.seq {
		return fmt.Errorf("completion slot %d seq %d: %w: no such request in flight", r.slot, r.seq, ErrProtocol)
	}
	limit := s.outCap
	if r.code != 0 {
		limit = min(MaxErrorMessage, c.g.slotOut)
	}
	if r.n > limit {
		return fmt.Errorf("completion slot %d: %w: %d bytes, at most %d allowed", r.slot, ErrProtocol, r.n, limit)
	}
	if s.state.CompareAndSwap(slotWaiting, slotDone) {
		s.done <- r
		return nil
	}
	if s.state.CompareAndSwap(slotAbandoned, slotFree) {
		c.free <- r.slot
		return nil
	}
	return fmt.Errorf("completion slot %d: %w: slot changed state under the reader", r.slot, ErrProtocol)
}

// fail tears the channel down once: every waiting and later Call returns an
// error wrapping ErrClosed and cause.
func (c *Client) fail(cause error) {
	c.failed.Do(func() {
		c.deadErr = fmt.Errorf("%w: %w", ErrClosed, cause)
		close(c.dead)
		c.conn.Close()
	})
}

// Close tears the channel down (the plugin's Serve sees the socket close),
// waits for the reader, and unmaps the arena once no Call is copying through
// it. Calls still waiting return an error wrapping ErrClosed.
func (c *Client) Close() error {
	c.fail(errLocalClose)
	c.wg.Wait()
	c.memMu.Lock()
	defer c.memMu.Unlock()
	if c.mem == nil {
		return nil
	}
	err := unix.Munmap(c.mem)
	c.mem = nil
	if err != nil {
		return fmt.Errorf("shm close: unmap arena: %w", err)
	}
	return nil
}
