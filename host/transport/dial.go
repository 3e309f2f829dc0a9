package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// dialer is what a dialing session needs to build connections again.
type dialer struct {
	addr    string
	tls     *tls.Config
	dial    DialFunc
	cfg     effective
	streams int
	hook    atomic.Pointer[func(stream int, hello *pb.Hello)] // tests observe Hellos
}

// Dial opens a session to the listener at cfg.Addr: a control connection
// that opens it, then cfg.Streams data connections. It returns when all
// are up, or the first error (a certificate the listener refuses, a
// listener certificate that is not from the CA or not for PeerName, an
// incompatible peer, a refusal) with the listener's reason.
//
// The session then repairs itself: when connections break, it dials again
// with backoff for up to ResumeWindow and resumes where the peer's
// receipts say.
func Dial(ctx context.Context, cfg DialConfig) (*Session, error) {
	streams := cfg.Streams
	if streams == 0 {
		streams = DefaultStreams
	}
	if streams < 1 || streams > hardMaxStreams {
		return nil, fmt.Errorf("transport: dial: Streams %d out of range 1..%d", streams, hardMaxStreams)
	}
	eff, err := cfg.Options.resolve(streams)
	if err != nil {
		return nil, err
	}
	tc, err := checkTLS(cfg.TLS, false)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.PeerName != "":
		tc.ServerName = cfg.PeerName
	case tc.ServerName == "":
		host, _, err := net.SplitHostPort(cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", cfg.Addr, err)
		}
		tc.ServerName = host
	}
	d := &dialer{addr: cfg.Addr, tls: tc, dial: cfg.Dial, cfg: eff, streams: streams}
	if d.dial == nil {
		var nd net.Dialer
		d.dial = nd.DialContext
	}
	return d.open(ctx)
}

func (d *dialer) open(ctx context.Context) (*Session, error) {
	hctx, cancel := context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	defer cancel()
	hello := &pb.Hello{Versions: ourVersions, Capabilities: ourCaps(),
		Purpose: &pb.Hello_Open{Open: &pb.Open{Streams: uint32(d.streams), Limits: ourLimits(d.cfg)}}}
	// The data connections dial and shake hands while the control
	// connection opens the session: two of a session's six round trips
	// (120 ms of the lab's 60 ms internet profile). Each sends its Hello,
	// which names the session, once the control connection's Welcome is
	// in. They start once the control connection's TCP connection is up,
	// so that the listener accepts it first: on a listener short of
	// handshake slots the control connection must not lose its slot to
	// its own data connections (those that do retry in attachData).
	var early *earlyData
	c, w, err := d.connectThen(hctx, 0, func(tls.ConnectionState) (*pb.Hello, error) { return hello, nil },
		func() { early = d.dialEarly(ctx, d.streams) })
	if err != nil {
		early.abandon(err)
		return nil, err
	}
	if w.GetLimits() == nil {
		c.raw.Close()
		err := fmt.Errorf("transport: dial %s: welcome without limits: %w", d.addr, ErrBadFrame)
		early.abandon(err)
		return nil, err
	}
	id := [idSize]byte(w.GetSessionId())
	cs := c.tls.ConnectionState()
	key, err := resumeKey(cs, id)
	if err != nil {
		c.raw.Close()
		err = fmt.Errorf("transport: dial %s: %w", d.addr, err)
		early.abandon(err)
		return nil, err
	}
	s := newSession(true, id, peerIdentity(cs), w.GetVersion(), w.GetCapabilities(), key, d.cfg, d.streams, limitsOf(w.GetLimits()))
	s.dial = d
	ep := newEpoch(1)
	s.mu.Lock()
	s.epochNum = 1
	s.ep = ep
	err = s.startConnLocked(ep, c)
	s.mu.Unlock()
	if err == nil {
		err = s.attachData(ctx, ep, early)
	} else {
		early.abandon(err)
	}
	if err != nil {
		s.fail(err, true)
		s.mu.Lock()
		s.failEpochLocked(ep, err)
		s.mu.Unlock()
		ep.wg.Wait()
		s.releaseAll()
		close(s.supDone)
		return nil, err
	}
	go s.superviseDialer()
	return s, nil
}

// connect dials, runs TLS, sends the Hello that mk builds for this
// connection and reads the Welcome. A refusal becomes an error.
func (d *dialer) connect(ctx context.Context, stream int, mk func(tls.ConnectionState) (*pb.Hello, error)) (*wconn, *pb.Welcome, error) {
	return d.connectThen(ctx, stream, mk, nil)
}

// connectThen is connect, calling dialed (when not nil) once the TCP
// connection is up, before TLS.
func (d *dialer) connectThen(ctx context.Context, stream int, mk func(tls.ConnectionState) (*pb.Hello, error), dialed func()) (*wconn, *pb.Welcome, error) {
	nc, err := d.dial(ctx, "tcp", d.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("transport: dial %s: %w", d.addr, err)
	}
	if dialed != nil {
		dialed()
	}
	if d.cfg.sockBuf > 0 && stream > 0 {
		setSocketBuffers(nc, d.cfg.sockBuf)
	}
	raw := &countConn{Conn: nc}
	fail := func(err error) (*wconn, *pb.Welcome, error) {
		raw.Close()
		if ctx.Err() != nil {
			// The deadline or cancellation is the cause; the i/o error
			// it provoked says less.
			err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	tc := tls.Client(raw, d.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(fmt.Errorf("transport: dial %s: TLS handshake: %w", d.addr, classifyTLS(err)))
	}
	hello, err := mk(tc.ConnectionState())
	if err != nil {
		return fail(fmt.Errorf("transport: dial %s: %w", d.addr, err))
	}
	if h := d.hook.Load(); h != nil {
		(*h)(stream, hello)
	}
	if err := writeHandshake(tc, hello); err != nil {
		return fail(fmt.Errorf("transport: dial %s: %w", d.addr, classifyTLS(err)))
	}
	body, err := readHandshakeBody(tc)
	if err != nil {
		// In TLS 1.3 a rejected client certificate shows up here, as the
		// alert that answers our first write.
		return fail(fmt.Errorf("transport: dial %s: %w", d.addr, classifyTLS(err)))
	}
	w, err := decodeWelcome(body)
	if err != nil {
		return fail(fmt.Errorf("transport: dial %s: %w: %w", d.addr, ErrBadFrame, err))
	}
	if r := w.GetRefusal(); r != nil {
		return fail(fmt.Errorf("transport: dial %s: %w", d.addr, refusalError(r)))
	}
	if a := hello.GetAttach(); a != nil && string(w.GetSessionId()) != string(a.GetSessionId()) {
		return fail(fmt.Errorf("transport: dial %s: welcome names another session: %w", d.addr, ErrWrongSession))
	}
	raw.SetDeadline(time.Time{})
	return &wconn{tls: tc, raw: raw, stream: stream}, w, nil
}

// attachHello builds the Hello of an attaching connection.
func (s *Session) attachHello(ep uint64, stream int, received []uint64) func(tls.ConnectionState) (*pb.Hello, error) {
	return func(cs tls.ConnectionState) (*pb.Hello, error) {
		s.mu.Lock()
		s.ctrMax++
		ctr := s.ctrMax
		s.mu.Unlock()
		tok, err := attachToken(s.key, cs, s.id[:], ep, uint32(stream), ctr)
		if err != nil {
			return nil, err
		}
		return &pb.Hello{Versions: ourVersions, Capabilities: ourCaps(), Purpose: &pb.Hello_Attach{Attach: &pb.Attach{
			SessionId: s.id[:], Epoch: ep, Stream: uint32(stream), Counter: ctr, Token: tok, Received: received}}}, nil
	}
}

// busyRetries and busyPause: how an early data connection that a busy
// listener closed is dialled again (attachData).
const (
	busyRetries = 3
	busyPause   = 50 * time.Millisecond
)

// earlyData is the data connections of a session being opened, dialled
// while its control connection opens it (dialer.dialEarly). Each one runs
// TCP and TLS, then waits for the session (release) before its Hello.
type earlyData struct {
	ready  chan struct{} // closed by release or abandon
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// Set before ready is closed, read after.
	s      *Session
	ep     *epoch
	failed error
	// Written by connection i's goroutine, read after wg.Wait.
	conns []*wconn
	errs  []error
}

// dialEarly starts dialling data connections 1..streams.
func (d *dialer) dialEarly(ctx context.Context, streams int) *earlyData {
	e := &earlyData{ready: make(chan struct{}), conns: make([]*wconn, streams+1), errs: make([]error, streams+1)}
	ctx, e.cancel = context.WithTimeout(ctx, d.cfg.HandshakeTimeout)
	for i := 1; i <= streams; i++ {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.conns[i], _, e.errs[i] = d.connect(ctx, i, func(cs tls.ConnectionState) (*pb.Hello, error) {
				select {
				case <-e.ready:
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				}
				if e.failed != nil {
					return nil, e.failed
				}
				return e.s.attachHello(e.ep.num, i, nil)(cs)
			})
		}()
	}
	return e
}

// release lets the connections attach to s's epoch ep and waits for all
// of them.
func (e *earlyData) release(s *Session, ep *epoch) {
	e.s, e.ep = s, ep
	close(e.ready)
	e.wg.Wait()
	e.cancel()
}

// abandon ends the connections: the session did not open. A nil
// *earlyData (the control connection never got its TCP connection) has
// none.
func (e *earlyData) abandon(err error) {
	if e == nil {
		return
	}
	e.failed = err
	close(e.ready)
	e.cancel()
	e.wg.Wait()
}

// attachData attaches the data connections of ep, as many as are wanted:
// those early dialled while the session opened (nil for an epoch that
// resumes it), else dialled now, in parallel. A connection the listener
// refuses for its limit is left out (the count then drops to what it
// takes) rather than failing the epoch: a request to grow made while the
// link was down must not end the session at the resume.
func (s *Session) attachData(ctx context.Context, ep *epoch, early *earlyData) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	s.mu.Lock()
	n := s.streams
	if s.peerMaxStreams > 0 {
		n = min(n, s.peerMaxStreams)
	}
	s.mu.Unlock()
	errs := make([]error, n+1)
	refused := make([]bool, n+1)
	attach := func(i int, c *wconn, err error) {
		if err == nil {
			s.mu.Lock()
			err = s.startConnLocked(ep, c)
			s.mu.Unlock()
		}
		switch {
		case err == nil:
		case i > 1 && isLimitRefusal(err):
			refused[i] = true
		default:
			errs[i] = err
			cancel()
		}
	}
	if early != nil {
		// A new session: its count is the one it asked for, so every
		// early connection attaches.
		early.release(s, ep)
		for i := 1; i <= n; i++ {
			c, err := early.conns[i], early.errs[i]
			// An early connection can fail where a later one does not: it
			// competes for the listener's handshake slots with its own
			// control connection, and a listener with none free closes it
			// at once, without a refusal. Dial it again now that the
			// session is open, and twice more after a pause while the
			// listener frees a slot.
			for try := 0; err != nil && try < busyRetries && ctx.Err() == nil && !errors.Is(err, ErrRefused) && !errors.Is(err, ErrAuth); try++ {
				if try > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(busyPause):
					}
				}
				c, _, err = s.dial.connect(ctx, i, s.attachHello(ep.num, i, nil))
			}
			attach(i, c, err)
		}
	} else {
		var wg sync.WaitGroup
		for i := 1; i <= n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, _, err := s.dial.connect(ctx, i, s.attachHello(ep.num, i, nil))
				attach(i, c, err)
			}()
		}
		wg.Wait()
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if k := slices.Index(refused, true); k > 0 {
		// The listener's limit is on the stream number: every number
		// above a refused one is refused too.
		s.mu.Lock()
		s.peerMaxStreams, s.streams = k-1, k-1
		s.mu.Unlock()
	}
	return nil
}

// superviseDialer owns the dialing side's epochs: it applies requests to
// change the number of data connections, waits for the current epoch to
// end and builds the next, until the session ends.
func (s *Session) superviseDialer() {
	defer close(s.supDone)
	for {
		s.mu.Lock()
		ep := s.ep
		s.mu.Unlock()
		// A failing session ends its epoch itself, after its GOAWAY had
		// its chance; waiting for the epoch alone keeps out of its way.
		// An ended epoch goes first: a resize pending then is applied by
		// the resume.
		select {
		case <-ep.done:
		default:
			select {
			case <-ep.done:
			case <-s.resizeKick:
				s.applyResize(ep)
				continue
			}
		}
		ep.wg.Wait()
		s.mu.Lock()
		s.retireEpochLocked(ep)
		s.mu.Unlock()
		if s.Err() != nil {
			s.releaseAll()
			return
		}
		s.resume()
	}
}

// resume builds a new epoch, retrying with backoff until the resume window
// runs out. It returns with a new live epoch or the session failed.
func (s *Session) resume() {
	lost := time.Now()
	backoff := 20 * time.Millisecond
	s.mu.Lock()
	last := s.lastLink
	s.mu.Unlock()
	for {
		left := s.cfg.ResumeWindow - time.Since(lost)
		if left <= 0 {
			s.fail(fmt.Errorf("%w (%v); last error: %v", ErrLinkDown, s.cfg.ResumeWindow, last), false)
			return
		}
		err := s.reconnect(min(left, s.cfg.HandshakeTimeout))
		if err == nil {
			return
		}
		var re *refusedError
		if errors.As(err, &re) && re.code != pb.RefusalCode_REFUSAL_CODE_STALE || errors.Is(err, ErrProtocol) {
			// The listener no longer has the session, or says we are not
			// who we claim: retrying cannot help.
			s.fail(fmt.Errorf("transport: resume: %w", err), false)
			return
		}
		if s.Err() != nil {
			return
		}
		last = err
		s.mu.Lock()
		s.st.resumeFails++
		s.mu.Unlock()
		t := time.NewTimer(min(backoff, max(left-time.Since(lost), time.Millisecond)))
		select {
		case <-t.C:
		case <-s.done:
			t.Stop()
			return
		}
		backoff = min(backoff*2, time.Second)
	}
}

// reconnect dials a control connection that starts epoch n+1, exchanges
// receipts, then attaches the data connections.
func (s *Session) reconnect(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	s.mu.Lock()
	s.epochNum++
	num := s.epochNum
	received := s.receivedLocked()
	s.mu.Unlock()
	c, w, err := s.dial.connect(ctx, 0, s.attachHello(num, 0, received))
	if err != nil {
		return err
	}
	if len(w.GetReceived()) != numLanes {
		c.raw.Close()
		return fmt.Errorf("transport: resume: welcome without receipts: %w", ErrBadFrame)
	}
	ep := newEpoch(num)
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		c.raw.Close()
		return err
	}
	if err := s.resumeSendLocked(w.GetReceived()); err != nil {
		s.mu.Unlock()
		c.raw.Close()
		return fmt.Errorf("transport: resume: %w", err)
	}
	s.installEpochLocked(ep)
	err = s.startConnLocked(ep, c)
	s.mu.Unlock()
	if err == nil {
		err = s.attachData(ctx, ep, nil)
	}
	if err != nil {
		s.linkError(ep, err)
		ep.wg.Wait()
		s.mu.Lock()
		s.retireEpochLocked(ep)
		s.mu.Unlock()
		return err
	}
	s.mu.Lock()
	s.st.reconnects++
	s.mu.Unlock()
	return nil
}

// installEpochLocked makes ep current. Acknowledgements are repeated in
// every epoch: one written into a connection that then broke may never
// have arrived.
func (s *Session) installEpochLocked(ep *epoch) {
	s.ep = ep
	for _, in := range s.in {
		in.ackSent = 0
	}
	kick(ep.ctlKick)
	kick(s.epochCh)
}
