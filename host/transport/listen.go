package transport

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// Listener accepts sessions from dialing hosts. It also receives the
// connections with which a dialer resumes or adds to a session, and hands
// them to that session; keep it open while its sessions live.
type Listener struct {
	cfg  ListenConfig
	eff  effective
	tls  *tls.Config
	nl   net.Listener
	ctx  context.Context
	stop context.CancelFunc
	sem  chan struct{}
	wg   sync.WaitGroup // accept loop and handshakes

	acceptCh chan *Session
	// fixedStreams makes the listener behave as a peer without capResize
	// (tests: a peer that predates it).
	fixedStreams bool

	mu       sync.Mutex
	closed   bool
	sessions map[[idSize]byte]*Session
	perPeer  map[string]int
	pending  int
	st       ListenerStats
}

// ListenerStats counts what a listener saw.
type ListenerStats struct {
	Handshakes      uint64 // connections that completed TLS and Hello/Welcome
	HandshakeErrors uint64 // connections refused or failed in their handshake
	Busy            uint64 // connections closed at once: MaxHandshakes reached
	InHandshake     int    // connections in TLS or Hello/Welcome now
	Sessions        int    // live sessions
	Resumes         uint64 // epochs started by a resume
}

// Listen starts accepting on cfg.Listener, or on cfg.Addr.
func Listen(ctx context.Context, cfg ListenConfig) (*Listener, error) {
	eff, err := cfg.Options.resolve(max(cfg.MaxStreams, 1))
	if err != nil {
		return nil, err
	}
	tc, err := checkTLS(cfg.TLS, true)
	if err != nil {
		return nil, err
	}
	if cfg.MaxHandshakes == 0 {
		cfg.MaxHandshakes = DefaultMaxHandshakes
	}
	if cfg.MaxSessionsPerPeer == 0 {
		cfg.MaxSessionsPerPeer = DefaultMaxSessionsPeer
	}
	if cfg.MaxStreams == 0 {
		cfg.MaxStreams = 16
	}
	if cfg.AcceptBacklog == 0 {
		cfg.AcceptBacklog = DefaultAcceptBacklog
	}
	if cfg.MaxHandshakes < 1 || cfg.MaxSessionsPerPeer < 1 || cfg.AcceptBacklog < 1 || cfg.MaxStreams < 1 || cfg.MaxStreams > hardMaxStreams {
		return nil, fmt.Errorf("transport: listen: limits out of range (handshakes %d, sessions per peer %d, backlog %d, streams %d)",
			cfg.MaxHandshakes, cfg.MaxSessionsPerPeer, cfg.AcceptBacklog, cfg.MaxStreams)
	}
	nl := cfg.Listener
	if nl == nil {
		var lc net.ListenConfig
		if nl, err = lc.Listen(ctx, "tcp", cfg.Addr); err != nil {
			return nil, fmt.Errorf("transport: listen %s: %w", cfg.Addr, err)
		}
	}
	l := &Listener{cfg: cfg, eff: eff, tls: tc, nl: nl, sem: make(chan struct{}, cfg.MaxHandshakes),
		acceptCh: make(chan *Session, cfg.AcceptBacklog), sessions: map[[idSize]byte]*Session{}, perPeer: map[string]int{}}
	l.ctx, l.stop = context.WithCancel(context.Background())
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// Addr returns the listening address.
func (l *Listener) Addr() net.Addr { return l.nl.Addr() }

// Stats returns the listener's counters.
func (l *Listener) Stats() ListenerStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	st.Sessions = len(l.sessions)
	st.InHandshake = len(l.sem)
	return st
}

// Accept returns the next session a dialer opened.
func (l *Listener) Accept(ctx context.Context) (*Session, error) {
	select {
	case s := <-l.acceptCh:
		l.mu.Lock()
		l.pending--
		l.mu.Unlock()
		return s, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("transport: accept: %w", ctx.Err())
	case <-l.ctx.Done():
		return nil, fmt.Errorf("transport: accept: %w", ErrClosed)
	}
}

// Close stops accepting, waits for handshakes in progress and closes the
// sessions that were opened but not accepted. Accepted sessions are the
// caller's to close; they can no longer resume.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.mu.Unlock()
	l.stop()
	err := l.nl.Close()
	l.wg.Wait()
	for {
		select {
		case s := <-l.acceptCh:
			s.Close()
			continue
		default:
		}
		break
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: close listener: %w", err)
	}
	return nil
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		nc, err := l.nl.Accept()
		if err != nil {
			if l.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (out of file descriptors): wait a
			// little rather than spin.
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		select {
		case l.sem <- struct{}{}:
		default:
			nc.Close()
			l.mu.Lock()
			l.st.Busy++
			l.mu.Unlock()
			l.report(nc.RemoteAddr(), fmt.Errorf("transport: %d handshakes in progress, connection closed: %w", l.cfg.MaxHandshakes, ErrRefused))
			continue
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			err := l.handshake(nc)
			<-l.sem
			if err != nil {
				l.mu.Lock()
				l.st.HandshakeErrors++
				l.mu.Unlock()
				l.report(nc.RemoteAddr(), err)
			}
		}()
	}
}

func (l *Listener) report(addr net.Addr, err error) {
	if l.cfg.OnHandshakeError != nil {
		l.cfg.OnHandshakeError(addr, err)
	}
}

// refuse writes a Welcome carrying a refusal and returns it as an error.
func refuse(tc *tls.Conn, code pb.RefusalCode, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	writeHandshake(tc, &pb.Welcome{Refusal: &pb.Refusal{Code: code, Message: msg}})
	return fmt.Errorf("transport: refused %s: %w", msg, refusalError(&pb.Refusal{Code: code, Message: msg}))
}

// handshake runs TLS and Hello/Welcome on an accepted connection and hands
// it to a new or existing session. Whatever happens, the connection is
// either owned by a session or closed when it returns.
func (l *Listener) handshake(nc net.Conn) (err error) {
	raw := &countConn{Conn: nc}
	owned := false
	defer func() {
		if !owned {
			raw.Close()
		}
	}()
	raw.SetDeadline(time.Now().Add(l.eff.HandshakeTimeout))
	tc := tls.Server(raw, l.tls)
	if err := tc.HandshakeContext(l.ctx); err != nil {
		return fmt.Errorf("transport: TLS handshake from %v: %w", nc.RemoteAddr(), classifyTLS(err))
	}
	cs := tc.ConnectionState()
	peer := peerIdentity(cs)
	body, err := readHandshakeBody(tc)
	if err != nil {
		return fmt.Errorf("transport: hello from %s: %w", peer, err)
	}
	hello, err := decodeHello(body)
	if err != nil {
		return refuse(tc, pb.RefusalCode_REFUSAL_CODE_BAD_REQUEST, "%v", err)
	}
	version, r := pickVersion(hello.GetVersions(), hello.GetCapabilities())
	if r != nil {
		return refuse(tc, r.GetCode(), "%s", r.GetMessage())
	}
	if len(l.cfg.AllowedPeers) > 0 {
		ok := false
		for _, name := range l.cfg.AllowedPeers {
			if cs.PeerCertificates[0].VerifyHostname(name) == nil {
				ok = true
				break
			}
		}
		if !ok {
			return refuse(tc, pb.RefusalCode_REFUSAL_CODE_PEER_NOT_ALLOWED, "peer %s is not among the allowed peers %v", peer, l.cfg.AllowedPeers)
		}
	}
	c := &wconn{tls: tc, raw: raw}
	if o := hello.GetOpen(); o != nil {
		owned, err = l.open(c, peer, version, hello, o)
	} else {
		owned, err = l.attach(c, peer, version, hello.GetAttach())
	}
	if err == nil {
		l.mu.Lock()
		l.st.Handshakes++
		l.mu.Unlock()
	}
	return err
}

func (l *Listener) open(c *wconn, peer string, version uint32, hello *pb.Hello, o *pb.Open) (bool, error) {
	if int(o.GetStreams()) > l.cfg.MaxStreams {
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_LIMIT, "%d data connections asked, limit %d", o.GetStreams(), l.cfg.MaxStreams)
	}
	var id [idSize]byte
	rand.Read(id[:])
	key, err := resumeKey(c.tls.ConnectionState(), id)
	if err != nil {
		return false, err
	}
	eff := l.eff
	if l.cfg.SocketBuffer == 0 && eff.ExpectedRate > 0 && eff.ExpectedRTT > 0 {
		// Size per connection for the streams this dialer asked for.
		eff, _ = l.cfg.Options.resolve(int(o.GetStreams()))
	}
	s := newSession(false, id, peer, version, hello.GetCapabilities(), key, eff, int(o.GetStreams()), limitsOf(o.GetLimits()))
	s.ln = l
	s.resizable = s.resizable && !l.fixedStreams
	// The epoch exists before the Welcome leaves: the dialer attaches its
	// data connections the moment it reads it.
	ep := newEpoch(1)
	s.epochNum = 1
	s.installEpochLocked(ep)
	l.mu.Lock()
	switch {
	case l.closed:
		l.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_LIMIT, "listener closing")
	case l.perPeer[peer] >= l.cfg.MaxSessionsPerPeer:
		l.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_LIMIT, "peer %s already has %d sessions (limit)", peer, l.perPeer[peer])
	case l.pending >= l.cfg.AcceptBacklog:
		l.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_LIMIT, "accept backlog full (%d sessions not yet accepted)", l.pending)
	}
	l.sessions[id] = s
	l.perPeer[peer]++
	l.pending++
	l.mu.Unlock()
	w := &pb.Welcome{Version: version, Capabilities: l.caps(), SessionId: id[:], Limits: ourLimits(eff)}
	if err := writeHandshake(c.tls, w); err != nil {
		l.mu.Lock()
		l.pending--
		l.mu.Unlock()
		l.forget(s)
		return false, fmt.Errorf("transport: welcome to %s: %w", peer, err)
	}
	c.raw.SetDeadline(time.Time{})
	s.mu.Lock()
	s.startConnLocked(ep, c)
	s.mu.Unlock()
	go s.superviseListener()
	l.acceptCh <- s // room was reserved by pending
	return true, nil
}

// caps are the capabilities the listener announces.
func (l *Listener) caps() []string {
	if l.fixedStreams {
		return slices.DeleteFunc(ourCaps(), func(c string) bool { return c == capResize })
	}
	return ourCaps()
}

// forget drops s from the listener's tables; its id is then unknown.
func (l *Listener) forget(s *Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[s.id] == s {
		delete(l.sessions, s.id)
		if l.perPeer[s.peerName]--; l.perPeer[s.peerName] <= 0 {
			delete(l.perPeer, s.peerName)
		}
	}
}

func (l *Listener) attach(c *wconn, peer string, version uint32, a *pb.Attach) (bool, error) {
	id := [idSize]byte(a.GetSessionId())
	l.mu.Lock()
	s := l.sessions[id]
	l.mu.Unlock()
	if s == nil {
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_UNKNOWN_SESSION, "no session %x (it ended, or never existed)", id[:])
	}
	if s.peerName != peer {
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_AUTH, "session %x belongs to another peer", id[:4])
	}
	want, err := attachToken(s.key, c.tls.ConnectionState(), id[:], a.GetEpoch(), a.GetStream(), a.GetCounter())
	if err != nil {
		return false, err
	}
	if !hmacEqual(want, a.GetToken()) {
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_AUTH, "attach token for session %x does not verify (wrong key, or made for another connection)", id[:4])
	}
	s.mu.Lock()
	fresh := s.useCounterLocked(a.GetCounter())
	s.mu.Unlock()
	if !fresh {
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_AUTH, "attach counter %d of session %x already used (replay)", a.GetCounter(), id[:4])
	}
	c.stream = int(a.GetStream())
	if c.stream == 0 {
		return s.attachControl(c, version, a)
	}
	return s.attachDataConn(c, version, a)
}

// attachControl starts a new epoch on the listener's side: the old one is
// torn down first, so that the receipts it reports are final.
func (s *Session) attachControl(c *wconn, version uint32, a *pb.Attach) (bool, error) {
	num := a.GetEpoch()
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_UNKNOWN_SESSION, "session ended: %v", err)
	}
	if num <= s.epochNum {
		cur := s.epochNum
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_STALE, "epoch %d is not after current epoch %d", num, cur)
	}
	s.epochNum = num
	old := s.ep
	s.failEpochLocked(old, fmt.Errorf("superseded by epoch %d", num))
	s.mu.Unlock()
	old.wg.Wait()

	s.mu.Lock()
	if s.err != nil || s.epochNum != num {
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_STALE, "epoch %d superseded", num)
	}
	s.retireEpochLocked(old)
	if err := s.resumeSendLocked(a.GetReceived()); err != nil {
		s.mu.Unlock()
		s.fail(fmt.Errorf("transport: resume: %w", err), false)
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_BAD_REQUEST, "%v", err)
	}
	received := s.receivedLocked()
	// Installed before the Welcome leaves, so that data connections of
	// the new epoch find it; its control connection starts after.
	ep := newEpoch(num)
	s.installEpochLocked(ep)
	s.mu.Unlock()
	w := &pb.Welcome{Version: version, Capabilities: s.ln.caps(), SessionId: s.id[:], Received: received}
	if err := writeHandshake(c.tls, w); err != nil {
		err = fmt.Errorf("transport: welcome (resume) to %s: %w", s.peerName, err)
		s.linkError(ep, err)
		return false, err
	}
	c.raw.SetDeadline(time.Time{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startConnLocked(ep, c); err != nil {
		return true, err
	}
	s.st.reconnects++
	if s.ln != nil {
		s.ln.mu.Lock()
		s.ln.st.Resumes++
		s.ln.mu.Unlock()
	}
	return true, nil
}

func (s *Session) attachDataConn(c *wconn, version uint32, a *pb.Attach) (bool, error) {
	s.mu.Lock()
	ep := s.ep
	switch {
	case s.err != nil:
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_UNKNOWN_SESSION, "session ended")
	case a.GetEpoch() != s.epochNum || ep == nil || ep.num != a.GetEpoch() || ep.failed:
		cur := s.epochNum
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_STALE, "epoch %d is not the current epoch %d", a.GetEpoch(), cur)
	case !s.resizable && c.stream > s.streams:
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_BAD_REQUEST, "stream %d of a session with %d", c.stream, s.streams)
	case c.stream > s.ln.cfg.MaxStreams:
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_LIMIT, "stream %d: this listener takes at most %d data connections per session", c.stream, s.ln.cfg.MaxStreams)
	case ep.streams[c.stream]:
		s.mu.Unlock()
		return false, refuse(c.tls, pb.RefusalCode_REFUSAL_CODE_STALE, "stream %d already attached in epoch %d", c.stream, ep.num)
	}
	ep.streams[c.stream] = true // reserved while the Welcome goes out
	s.mu.Unlock()
	if s.cfg.sockBuf > 0 {
		setSocketBuffers(c.raw.Conn, s.cfg.sockBuf)
	}
	w := &pb.Welcome{Version: version, Capabilities: s.ln.caps(), SessionId: s.id[:]}
	if err := writeHandshake(c.tls, w); err != nil {
		return false, fmt.Errorf("transport: welcome (stream %d) to %s: %w", c.stream, s.peerName, err)
	}
	c.raw.SetDeadline(time.Time{})
	s.mu.Lock()
	defer s.mu.Unlock()
	return true, s.startConnLocked(ep, c)
}

// superviseListener owns the listening side's epochs: when one ends it
// waits, up to the resume window, for the dialer to start the next.
func (s *Session) superviseListener() {
	defer close(s.supDone)
	defer s.ln.forget(s)
	for {
		s.mu.Lock()
		ep := s.ep
		s.mu.Unlock()
		<-ep.done
		if s.Err() != nil {
			ep.wg.Wait()
			s.mu.Lock()
			s.retireEpochLocked(ep)
			s.mu.Unlock()
			s.releaseAll()
			return
		}
		t := time.NewTimer(s.cfg.ResumeWindow)
		for waiting := true; waiting; {
			s.mu.Lock()
			waiting = s.ep == ep
			last := s.lastLink
			s.mu.Unlock()
			if !waiting {
				break
			}
			select {
			case <-s.epochCh:
			case <-s.done:
				waiting = false
			case <-t.C:
				s.fail(fmt.Errorf("%w (%v); last error: %v", ErrLinkDown, s.cfg.ResumeWindow, last), false)
				waiting = false
			}
		}
		t.Stop()
	}
}
