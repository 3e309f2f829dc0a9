package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// goawayLinger bounds how long a closing side waits for its GOAWAY to be
// written and for the peer to hang up before it cuts the connections.
const goawayLinger = time.Second

// Session is one end of a bidirectional, message-oriented DWCP session. It
// is safe for concurrent use; messages of one lane are delivered in the
// order their Send calls returned.
type Session struct {
	id       [idSize]byte
	isDialer bool
	dir      uint8 // direction bit of the frames this side sends
	peerName string
	version  uint32
	peerCaps []string
	key      []byte // resume key, from the TLS exporter of the first connection
	cfg      effective
	start    time.Time
	// resizable: both sides have capResize, so the dialer may change the
	// number of data connections of a live session. warmable: the peer has
	// capWarmup, so it takes PAD frames on a connection being warmed.
	resizable bool
	warmable  bool

	dial *dialer   // dialer side only
	ln   *Listener // listener side only

	ctx     context.Context // cancelled when the session ends; bounds dials
	cancel  context.CancelFunc
	done    chan struct{} // closed when err is set
	supDone chan struct{} // closed when the supervisor goroutine is gone

	mu         sync.Mutex
	err        error
	localClose bool
	out        [numLanes]*sendLane
	in         [numLanes]*recvLane
	ep         *epoch
	epochNum   uint64
	epochCh    chan struct{} // capacity 1: a new epoch was installed
	lastLink   error
	ctrMax     uint64 // attach counters: highest seen and a 64-bit replay bitmap
	ctrBits    uint64
	st         counters
	closedWire [2]uint64 // wire bytes of connections that are gone (read, written)

	// streams is the number of data connections wanted: Dial's count,
	// then the last SetStreams (dialer); the count opened with (listener).
	streams int
	// Resize requests (dialer): SetStreams bumps resizeGen and kicks the
	// supervisor, which applies the latest target and records the outcome
	// (resizeApplied, resizeErr), closing and replacing resizeDone.
	resizeKick    chan struct{}
	resizeGen     uint64
	resizeApplied uint64
	resizeErr     error
	resizeDone    chan struct{}
	// peerMaxStreams is the most data connections the listener takes, once
	// a refusal showed it (0: not known).
	peerMaxStreams int

	// trace, when set (tests), is told about every bulk DATA frame a data
	// connection finished writing or reading: where a frame's time went.
	trace atomic.Pointer[frameTrace]
}

// frameTrace observes bulk frames on data connections (tests only).
type frameTrace struct {
	wrote func(stream int, seq uint64, n int)
	read  func(stream int, seq uint64, n int)
}

// counters are Session statistics guarded by Session.mu.
type counters struct {
	msgsSent, msgsRecv       uint64
	bytesSent, bytesRecv     uint64
	connsOpened              uint64
	reconnects, resumeFails  uint64
	retransMsgs, retransByte uint64
	srtt, rttMin, rttLast    time.Duration
	rateBytes                int64
	rateStart                time.Time
	rate                     float64
	sockSnd, sockRcv         int
	added, retired           uint64 // data connections added to / retired from a live epoch
	warmed, padBytes         uint64 // added connections warmed, and the PAD payload bytes that took
}

// epoch is one generation of connections. Any connection failing ends the
// whole epoch; the dialer then builds the next one (a resume). Tearing
// everything down keeps the resume exchange exact: when a side reports
// what it received, no connection of the old epoch can still deliver.
type epoch struct {
	num     uint64
	done    chan struct{}
	failed  bool // guarded by Session.mu
	conns   []*wconn
	streams map[int]bool // data streams attached or being attached
	ctl     *wconn
	// ctx ends with the epoch: it bounds the dials that add connections.
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	ctlKick  chan struct{}
	dataKick chan struct{}
	ctlExit  chan struct{} // closed when the control writer returns
	ctlRead  chan struct{} // closed when the control reader returns

	pongWant bool
	pongTS   uint64
	pingTS   uint64
	goaway   *goawayReq
}

type goawayReq struct {
	code uint64
	text string
}

// wconn is one TLS connection of an epoch.
type wconn struct {
	tls    *tls.Conn
	raw    *countConn
	stream int // 0 is the control connection

	// Data connections only. A retiring connection's writer takes no more
	// frames and writes RETIRE; once it has and the peer's RETIRE was read,
	// the connection is closed and leaves the epoch (gone closes). retiring,
	// wdone and rdone are guarded by Session.mu.
	retiring     bool
	wdone, rdone bool
	kick         chan struct{} // capacity 1: wakes the writer to retire
	gone         chan struct{}
	// The last bulk sequence number written (by the writer goroutine) and
	// read (by the reader goroutine) on this connection: RETIRE carries
	// the first, the peer checks it against the second.
	wseq, rseq uint64
	// warming: added to a live epoch, the connection carries PAD frames,
	// not the stream, until it delivers about as much as the others
	// (guarded by Session.mu).
	warming bool
}

// countConn counts the bytes a connection carries at the TCP level
// (TLS records included).
type countConn struct {
	net.Conn
	rd, wr atomic.Uint64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.rd.Add(uint64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.wr.Add(uint64(n))
	return n, err
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func newSession(isDialer bool, id [idSize]byte, peerName string, version uint32, peerCaps []string, key []byte,
	cfg effective, streams int, peer peerLimits) *Session {
	s := &Session{id: id, isDialer: isDialer, peerName: peerName, version: version, peerCaps: peerCaps, key: key,
		cfg: cfg, streams: streams, start: time.Now(), done: make(chan struct{}), supDone: make(chan struct{}),
		epochCh: make(chan struct{}, 1), ctrBits: 1, resizable: slices.Contains(peerCaps, capResize),
		warmable:   slices.Contains(peerCaps, capWarmup),
		resizeKick: make(chan struct{}, 1), resizeDone: make(chan struct{})}
	if !isDialer {
		s.dir = dirFromListener
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// A sender keeps what the smaller of the two sides allows.
	s.out[laneBulk] = newSendLane(laneBulk, uint64(min(peer.winMsgs, cfg.WindowMessages)),
		min(peer.winBytes, cfg.WindowBytes), min(peer.maxMsg, int(min(peer.winBytes, cfg.WindowBytes))))
	s.out[lanePriority] = newSendLane(lanePriority, uint64(min(peer.priMsgs, priorityWindowMessages)),
		min(peer.priBytes, priorityWindowBytes), int(min(int64(peer.maxMsg), peer.priBytes, priorityWindowBytes)))
	s.in[laneBulk] = newRecvLane(laneBulk, uint64(cfg.WindowMessages), cfg.WindowBytes, cfg.MaxMessage)
	s.in[lanePriority] = newRecvLane(lanePriority, priorityWindowMessages, priorityWindowBytes,
		min(cfg.MaxMessage, priorityWindowBytes))
	return s
}

// peerLimits are the receive limits the peer announced.
type peerLimits struct {
	maxMsg             int
	winMsgs, priMsgs   int
	winBytes, priBytes int64
}

// ID returns the session id.
func (s *Session) ID() [16]byte { return s.id }

// PeerName returns the name from the peer's verified certificate.
func (s *Session) PeerName() string { return s.peerName }

// Version returns the negotiated protocol version.
func (s *Session) Version() uint32 { return s.version }

// PeerCapabilities returns the capabilities the peer announced.
func (s *Session) PeerCapabilities() []string { return append([]string(nil), s.peerCaps...) }

// MaxMessage returns the largest message Send accepts (the peer's limit).
func (s *Session) MaxMessage() int { return s.out[laneBulk].maxMsg }

// MaxPriorityMessage returns the largest message SendPriority accepts.
func (s *Session) MaxPriorityMessage() int { return s.out[lanePriority].maxMsg }

// Done is closed when the session has ended, for whatever reason.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended, or nil while it is alive.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Send queues msg on the bulk lane. It returns once msg is copied into the
// send window; it blocks while the window is full (the peer's application
// has not consumed enough), which is the backpressure the producer sees.
// msg may be reused as soon as Send returns.
func (s *Session) Send(ctx context.Context, msg []byte) error {
	return s.send(ctx, laneBulk, msg)
}

// SendPriority queues msg on the priority lane: a separate, ordered
// sequence of small messages carried on the control connection, never
// behind bulk data. Use it for QEMU's return path and control messages.
func (s *Session) SendPriority(ctx context.Context, msg []byte) error {
	return s.send(ctx, lanePriority, msg)
}

func (s *Session) send(ctx context.Context, lane uint8, msg []byte) error {
	out := s.out[lane]
	if len(msg) > out.maxMsg {
		return fmt.Errorf("transport: send %d bytes on %s lane (limit %d): %w", len(msg), laneName(lane), out.maxMsg, ErrTooLarge)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transport: send: %w", err)
	}
	// Copy and checksum before taking the lock: the CRC covers the
	// payload first precisely so that this part needs no sequence number.
	buf := getBuffer(headerSize + len(msg))
	copy(buf.b[headerSize:], msg)
	pcrc := crc32.Checksum(msg, castagnoli)
	for {
		s.mu.Lock()
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			buf.release()
			return fmt.Errorf("transport: send: %w", err)
		}
		if out.finQueued {
			s.mu.Unlock()
			buf.release()
			return fmt.Errorf("transport: send: %w", ErrWriteClosed)
		}
		if out.fits(len(msg)) {
			break
		}
		s.mu.Unlock()
		select {
		case <-out.space:
		case <-s.done:
		case <-ctx.Done():
			buf.release()
			return fmt.Errorf("transport: send (window full: peer has not consumed): %w", ctx.Err())
		}
	}
	seq := out.next
	out.next++
	out.bytes += int64(len(msg))
	h := header{typ: frameData, dir: s.dir, lane: lane, session: s.id, seq: seq, length: uint32(len(msg))}
	putHeader(buf.b, &h, pcrc)
	out.slots[seq%out.win] = outSlot{buf: buf, n: len(msg)}
	s.st.msgsSent++
	s.st.bytesSent += uint64(len(msg))
	more := out.fits(0)
	ep := s.ep
	s.mu.Unlock()
	if more {
		kick(out.space)
	}
	if ep != nil {
		if lane == laneBulk {
			kick(ep.dataKick)
		} else {
			kick(ep.ctlKick)
		}
	}
	return nil
}

func laneName(lane uint8) string {
	if lane == lanePriority {
		return "priority"
	}
	return "bulk"
}

// Recv returns the next message of the bulk lane, exactly once and in
// order. The returned slice belongs to the caller. After the peer's
// SetSendWindow caps the bulk bytes this side keeps unacknowledged at n
// (0 or less: only the peer's window limits it). A live migration wants
// little more than the path's bandwidth-delay product in flight: every
// byte queued here is a byte QEMU believes delivered, and at switchover
// the VM waits for the queue to drain. One message always fits, whatever
// n is. Safe to call at any time.
func (s *Session) SetSendWindow(n int64) {
	s.mu.Lock()
	out := s.out[laneBulk]
	grew := n <= 0 || n > out.limit
	out.limit = max(n, 0)
	s.mu.Unlock()
	if grew {
		kick(out.space)
	}
}

// Recv returns the next message of the bulk lane; after the peer's
// CloseWrite and the last message it returns io.EOF. The message's
// buffer is handed over (the session's pool makes another).
func (s *Session) Recv(ctx context.Context) ([]byte, error) {
	msg, _, err := s.recv(ctx, laneBulk)
	return msg, err
}

// RecvAppend is Recv appending the message to dst, which lets a caller
// reuse one buffer and the session recycle its own.
func (s *Session) RecvAppend(ctx context.Context, dst []byte) ([]byte, error) {
	msg, buf, err := s.recv(ctx, laneBulk)
	if err != nil {
		return nil, err
	}
	dst = append(dst, msg...)
	buf.release()
	return dst, nil
}

// RecvBuffer is Recv lending the session's receive buffer instead of
// handing it over: release gives it back for the next message, so a
// receiver that is done with each message in turn allocates none. msg
// must not be used after release; a caller that never releases only
// costs the pool a buffer.
func (s *Session) RecvBuffer(ctx context.Context) (msg []byte, release func(), err error) {
	msg, buf, err := s.recv(ctx, laneBulk)
	if err != nil {
		return nil, nil, err
	}
	return msg, buf.release, nil
}

// RecvPriority returns the next message of the priority lane.
func (s *Session) RecvPriority(ctx context.Context) ([]byte, error) {
	msg, _, err := s.recv(ctx, lanePriority)
	return msg, err
}

// recv returns the next message of lane and the pooled buffer holding it
// (one reference, the caller's).
func (s *Session) recv(ctx context.Context, lane uint8) ([]byte, *buffer, error) {
	in := s.in[lane]
	for {
		s.mu.Lock()
		if s.localClose {
			s.mu.Unlock()
			return nil, nil, fmt.Errorf("transport: recv: %w", ErrClosed)
		}
		if buf, n := in.take(); buf != nil {
			s.st.msgsRecv++
			s.st.bytesRecv += uint64(n)
			more := in.consumed+1 < in.next
			ack := in.ackDue()
			ep := s.ep
			s.mu.Unlock()
			if more {
				kick(in.ready)
			}
			if ack && ep != nil {
				kick(ep.ctlKick)
			}
			return buf.b[:n:n], buf, nil
		}
		if in.finSet && in.consumed == in.fin {
			s.mu.Unlock()
			return nil, nil, io.EOF
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return nil, nil, fmt.Errorf("transport: recv: %w", err)
		}
		s.mu.Unlock()
		select {
		case <-in.ready:
		case <-s.done:
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("transport: recv: %w", ctx.Err())
		}
	}
}

// CloseWrite ends both lanes of this side: the peer's Recv returns io.EOF
// after the last message. It waits until the peer's application has
// consumed everything (every message acknowledged), or ctx ends.
func (s *Session) CloseWrite(ctx context.Context) error {
	s.mu.Lock()
	for _, out := range s.out {
		if !out.finQueued {
			out.finQueued = true
			out.fin = out.next - 1
		}
	}
	ep := s.ep
	s.mu.Unlock()
	if ep != nil {
		kick(ep.ctlKick)
	}
	for {
		s.mu.Lock()
		drained := s.out[laneBulk].acked == s.out[laneBulk].fin && s.out[lanePriority].acked == s.out[lanePriority].fin
		err := s.err
		s.mu.Unlock()
		if drained {
			return nil
		}
		if err != nil {
			return fmt.Errorf("transport: close write: %w", err)
		}
		select {
		case <-s.out[laneBulk].space:
		case <-s.out[lanePriority].space:
		case <-s.done:
		case <-ctx.Done():
			return fmt.Errorf("transport: close write (peer has not consumed everything): %w", ctx.Err())
		}
	}
}

// Close ends the session at once: it acknowledges what was consumed, tells
// the peer with a GOAWAY, closes every connection and waits for every
// goroutine of the session. Messages not yet acknowledged are lost; call
// CloseWrite first for a clean end. Close always returns nil; it is safe to
// call more than once.
func (s *Session) Close() error {
	s.mu.Lock()
	s.localClose = true
	s.mu.Unlock()
	s.fail(ErrClosed, true)
	<-s.supDone
	s.mu.Lock()
	for _, l := range s.in {
		l.releaseAll()
	}
	s.mu.Unlock()
	return nil
}

// fail ends the session with err. With notify, the peer is sent a GOAWAY
// first (carrying err's text unless err is ErrClosed).
func (s *Session) fail(err error, notify bool) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.done)
	s.cancel()
	ep := s.ep
	var written, hungUp chan struct{}
	if notify && ep != nil && !ep.failed && ep.ctl != nil {
		g := &goawayReq{code: goawayError, text: err.Error()}
		if errors.Is(err, ErrClosed) {
			g = &goawayReq{code: goawayNormal, text: "closed"}
		}
		ep.goaway = g
		written, hungUp = ep.ctlExit, ep.ctlRead
		kick(ep.ctlKick)
	}
	s.mu.Unlock()
	if written != nil {
		// Let the GOAWAY out and the peer hang up first: cutting a
		// connection with unread bytes makes the kernel send a reset that
		// can overtake the GOAWAY.
		t := time.NewTimer(goawayLinger)
		select {
		case <-written:
			select {
			case <-hungUp:
			case <-t.C:
			}
		case <-t.C:
		}
		t.Stop()
	}
	if ep != nil {
		s.mu.Lock()
		s.failEpochLocked(ep, err)
		s.mu.Unlock()
	}
}

// failEpochLocked ends ep: its connections are closed (their goroutines
// then return). Closing the TCP connection rather than TLS avoids waiting
// on a close_notify that a stuck peer would never read.
func (s *Session) failEpochLocked(ep *epoch, err error) {
	if ep.failed {
		return
	}
	ep.failed = true
	close(ep.done)
	ep.cancel()
	for _, c := range ep.conns {
		c.raw.Close()
	}
	if s.err == nil && err != nil {
		s.lastLink = err
	}
}

func newEpoch(num uint64) *epoch {
	ep := &epoch{num: num, done: make(chan struct{}), streams: map[int]bool{},
		ctlKick: make(chan struct{}, 1), dataKick: make(chan struct{}, 1),
		ctlExit: make(chan struct{}), ctlRead: make(chan struct{})}
	ep.ctx, ep.cancel = context.WithCancel(context.Background())
	return ep
}

// startConnLocked adds c to ep and starts its reader and writer. It fails
// if ep has already ended.
func (s *Session) startConnLocked(ep *epoch, c *wconn) error {
	if ep.failed || s.err != nil {
		c.raw.Close()
		return fmt.Errorf("transport: connection %d: epoch %d already ended", c.stream, ep.num)
	}
	ep.conns = append(ep.conns, c)
	s.st.connsOpened++
	ep.wg.Add(2)
	if c.stream == 0 {
		ep.ctl = c
		go s.readLoop(ep, c)
		go s.ctlWriteLoop(ep, c)
	} else {
		ep.streams[c.stream] = true
		c.kick, c.gone = make(chan struct{}, 1), make(chan struct{})
		setNotsentLowat(c.raw.Conn, notsentLowat)
		if snd, rcv, ok := socketBuffers(c.raw.Conn); ok {
			s.st.sockSnd, s.st.sockRcv = snd, rcv
		}
		go s.readLoop(ep, c)
		go s.dataWriteLoop(ep, c)
	}
	return nil
}

// retireEpoch folds the wire counters of ep's (now finished) connections
// into the session totals.
func (s *Session) retireEpochLocked(ep *epoch) {
	for _, c := range ep.conns {
		s.closedWire[0] += c.raw.rd.Load()
		s.closedWire[1] += c.raw.wr.Load()
	}
	ep.conns = nil
}

// receivedLocked returns, per lane, the highest sequence number received
// in order: what the peer replays after.
func (s *Session) receivedLocked() []uint64 {
	return []uint64{s.in[laneBulk].next - 1, s.in[lanePriority].next - 1}
}

func (s *Session) resumeSendLocked(received []uint64) error {
	for lane, out := range s.out {
		if err := out.resumeFrom(received[lane]); err != nil {
			return err
		}
	}
	return nil
}

// releaseAll returns the send windows' pooled buffers once no goroutine
// of the session is left. Received messages stay: Recv still hands out
// what arrived intact before the session ended, until Close.
func (s *Session) releaseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.out {
		l.releaseAll()
	}
}

// monotonic returns nanoseconds since the session started; PINGs carry it.
func (s *Session) monotonic() uint64 { return uint64(time.Since(s.start)) }
