package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// streamBoth runs a bulk stream each way (and a trickle on the priority
// lane) until stop, then CloseWrite; the receivers check every byte and
// the order. Wait returns the first error.
func streamBoth(ctx context.Context, cli, srv *Session, maxSize int, stop *atomic.Bool) *group {
	var g group
	var sent [2]atomic.Int64
	var prio [2]atomic.Int64
	for k, s := range []*Session{cli, srv} {
		stream := uint64(k + 1)
		g.Go(func() error {
			i := 0
			var buf []byte
			for ; !stop.Load(); i++ {
				if i%8 == 7 {
					// Tens of MB/s a side: plenty in flight at every
					// change without hogging a shared machine.
					time.Sleep(time.Millisecond)
				}
				buf = appendMessage(buf, stream, uint64(i), maxSize)
				if err := s.Send(ctx, buf); err != nil {
					return fmt.Errorf("side %d send %d: %w", k, i, err)
				}
				if i%16 == 0 {
					if err := s.SendPriority(ctx, message(stream+10, uint64(i/16), 256)); err != nil {
						return fmt.Errorf("side %d send priority: %w", k, err)
					}
					prio[k].Add(1)
				}
			}
			sent[k].Store(int64(i))
			return s.CloseWrite(ctx)
		})
		peerStream := uint64(2 - k)
		g.Go(func() error {
			n, err := recvAll(ctx, s, peerStream, maxSize)
			if err != nil {
				return fmt.Errorf("side %d recv: %w", k, err)
			}
			if want := sent[1-k].Load(); int64(n) != want {
				return fmt.Errorf("side %d received %d messages, peer sent %d", k, n, want)
			}
			return nil
		})
		g.Go(func() error {
			for i := 0; ; i++ {
				m, err := s.RecvPriority(ctx)
				if errors.Is(err, io.EOF) {
					if want := prio[1-k].Load(); int64(i) != want {
						return fmt.Errorf("side %d: %d priority messages, peer sent %d", k, i, want)
					}
					return nil
				}
				if err != nil {
					return fmt.Errorf("side %d recv priority: %w", k, err)
				}
				if err := checkMessage(peerStream+10, uint64(i), 256, m); err != nil {
					return fmt.Errorf("side %d priority %d: %w", k, i, err)
				}
			}
		})
	}
	return &g
}

// waitStreams waits until both sides have n data connections carrying
// frames and nothing else (retired connections gone on both sides).
func waitStreams(ctx context.Context, t *testing.T, cli, srv *Session, n int) {
	t.Helper()
	for {
		cs, ss := cli.Stats(), srv.Stats()
		if cs.Streams == n && ss.Streams == n && cs.Connections == n+1 && ss.Connections == n+1 {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("want %d data connections: dialer has %d (%d connections), listener %d (%d)", n, cs.Streams, cs.Connections, ss.Streams, ss.Connections)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestResizeWhileStreaming grows and shrinks the data connections of a
// session ten times while both sides stream: every message arrives once,
// in order, byte for byte; each change adds or retires exactly the
// connections it should; no resume is needed.
func TestResizeWhileStreaming(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stop atomic.Bool
	g := streamBoth(ctx, cli, srv, 48<<10, &stop)

	prev, added, retired := 2, 0, 0
	for _, n := range []int{6, 1, 4, 16, 3, 3, 8, 2, 5, 1} {
		waitReceived(ctx, t, srv, 1<<20) // every change meets a transfer in full flow
		got, err := cli.Resize(ctx, n)
		if err != nil || got != n {
			t.Fatalf("Resize(%d) = %d, %v", n, got, err)
		}
		if n > prev {
			added += n - prev
		} else {
			retired += prev - n
		}
		prev = n
		st := cli.Stats()
		if st.Streams != n || st.StreamsWanted != n || st.StreamsAdded != uint64(added) || st.StreamsRetired != uint64(retired) {
			t.Fatalf("after Resize(%d): streams %d wanted %d added %d retired %d; want added %d retired %d",
				n, st.Streams, st.StreamsWanted, st.StreamsAdded, st.StreamsRetired, added, retired)
		}
		waitStreams(ctx, t, cli, srv, n)
	}
	waitReceived(ctx, t, srv, 1<<20)
	stop.Store(true)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	cs, ss := cli.Stats(), srv.Stats()
	if cs.Reconnects != 0 || cs.Epoch != 1 || cs.RetransmittedMessages != 0 || ss.DuplicatesDropped != 0 {
		t.Errorf("a change cost a resume or a retransmission: %+v", cs)
	}
	if ss.StreamsRetired != uint64(retired) {
		t.Errorf("listener retired %d connections, want %d", ss.StreamsRetired, retired)
	}
	t.Logf("client sent %d messages (%d MB), received %d", cs.MessagesSent, cs.BytesSent>>20, cs.MessagesReceived)
}

// TestResizeInterruptedByACut cuts every connection while a change is under
// way, growing (the cut comes while the new connections are dialed) and
// shrinking (while the RETIRE exchange is held up): the resume builds the
// next epoch with the count asked for, Resize reports it, and the stream is
// exact.
func TestResizeInterruptedByACut(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	px := newProxy(t, e.ln.Addr().String())
	e.dial.Addr = px.addr()
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stop atomic.Bool
	g := streamBoth(ctx, cli, srv, 32<<10, &stop)

	// Grow: the hook runs as a new connection is about to say Hello.
	var cutOnce atomic.Bool
	hook := func(stream int, h *pb.Hello) {
		if stream > 2 && h.GetAttach().GetEpoch() == 1 && cutOnce.CompareAndSwap(false, true) {
			px.cut()
		}
	}
	cli.dial.hook.Store(&hook)
	waitReceived(ctx, t, srv, 1<<20)
	got, err := cli.Resize(ctx, 6)
	if err != nil || got != 6 {
		t.Fatalf("Resize(6) across a cut = %d, %v", got, err)
	}
	cli.dial.hook.Store(nil)
	if !cutOnce.Load() || cli.Stats().Reconnects == 0 {
		t.Fatalf("the cut did not happen during the change: %+v", cli.Stats())
	}
	waitStreams(ctx, t, cli, srv, 6)

	// Shrink: hold every byte in the proxy so the RETIREs cannot go
	// through, wait until the dialer has started retiring, then cut.
	waitReceived(ctx, t, srv, 1<<20)
	before := cli.Stats().Reconnects
	px.setPaused(true)
	done := make(chan error, 1)
	go func() {
		got, err := cli.Resize(ctx, 3)
		if err == nil && got != 3 {
			err = fmt.Errorf("got %d connections", got)
		}
		done <- err
	}()
	for cli.Stats().Streams != 3 {
		if ctx.Err() != nil {
			t.Fatal("the shrink never started")
		}
		time.Sleep(time.Millisecond)
	}
	if st := cli.Stats(); st.StreamsRetired != 0 {
		t.Fatalf("connections retired through a paused link: %+v", st)
	}
	px.cut()
	px.setPaused(false)
	if err := <-done; err != nil {
		t.Fatalf("Resize(3) across a cut: %v", err)
	}
	if cli.Stats().Reconnects == before {
		t.Fatal("no resume after the cut")
	}
	waitStreams(ctx, t, cli, srv, 3)
	waitReceived(ctx, t, srv, 1<<20)
	stop.Store(true)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestResizeRefusedByThePeer: a listener that takes at most 4 data
// connections refuses the rest. The session keeps what was accepted,
// Resize says why, the next request above the limit is answered without
// dialing, and the stream is unharmed.
func TestResizeRefusedByThePeer(t *testing.T) {
	e := newEnv(t, ListenConfig{MaxStreams: 4}, DialConfig{Streams: 2})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dials atomic.Int32
	hook := func(int, *pb.Hello) { dials.Add(1) }
	cli.dial.hook.Store(&hook)

	got, err := cli.Resize(ctx, 6)
	if got != 4 || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "at most 4 data connections") {
		t.Fatalf("Resize(6) = %d, %v; want 4 and the listener's refusal", got, err)
	}
	if st := cli.Stats(); st.Streams != 4 || st.StreamsWanted != 4 || !strings.Contains(st.LastResizeError, "at most 4") {
		t.Errorf("after the refusal: %+v", st)
	}
	d := dials.Load()
	got, err = cli.Resize(ctx, 9)
	if got != 4 || !errors.Is(err, ErrRefused) || dials.Load() != d {
		t.Errorf("Resize(9) = %d, %v after %d more dials; want 4, ErrRefused, no dial", got, err, dials.Load()-d)
	}
	if got, err := cli.Resize(ctx, 3); got != 3 || err != nil {
		t.Errorf("Resize(3) = %d, %v", got, err)
	}
	waitStreams(ctx, t, cli, srv, 3)
	exchange(t, cli, srv, 300, 16<<10)
}

// TestResizeUnsupported: only the dialer changes the connections, only
// with a peer that announced the capability, and only within 1..64.
func TestResizeUnsupported(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	cli, srv := e.pair()
	if err := srv.SetStreams(3); !errors.Is(err, ErrUnsupported) {
		t.Errorf("listener SetStreams: %v, want ErrUnsupported", err)
	}
	for _, n := range []int{0, -1, 65} {
		if err := cli.SetStreams(n); err == nil {
			t.Errorf("SetStreams(%d) accepted", n)
		}
	}

	old := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	old.ln.fixedStreams = true
	cli, srv = old.pair()
	if err := cli.SetStreams(3); !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), capResize) {
		t.Errorf("SetStreams with a peer that cannot: %v", err)
	}
	exchange(t, cli, srv, 50, 4096)
}

// rawData attaches a data connection to p's session by hand (the raw peer
// knows the session's key: it made the control connection).
func rawData(t *testing.T, e *env, p *rawPeer, ctl *tls.Conn, stream uint32, counter uint64) *tls.Conn {
	t.Helper()
	key, err := resumeKey(ctl.ConnectionState(), p.id)
	if err != nil {
		t.Fatal(err)
	}
	c := rawDial(t, e, "src")
	tok, err := attachToken(key, c.ConnectionState(), p.id[:], 1, stream, counter)
	if err != nil {
		t.Fatal(err)
	}
	w := rawHello(t, c, &pb.Hello{Versions: ourVersions, Capabilities: ourCaps(), Purpose: &pb.Hello_Attach{Attach: &pb.Attach{
		SessionId: p.id[:], Epoch: 1, Stream: stream, Counter: counter, Token: tok}}})
	if w.GetRefusal() != nil {
		t.Fatal(w.GetRefusal())
	}
	return c
}

// TestRetireOnTheWire drives the listener's side of a retirement byte by
// byte: after the dialer's DATA and RETIRE on a data connection, the
// listener answers RETIRE naming the last message it put there (none: 0),
// closes the connection, and the session goes on with the rest.
func TestRetireOnTheWire(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{})
	ctl := rawDial(t, e, "src")
	w := rawHello(t, ctl, openHello([]uint32{1}, ourCaps()))
	if w.GetRefusal() != nil {
		t.Fatal(w.GetRefusal())
	}
	p := &rawPeer{t: t, c: ctl, id: [idSize]byte(w.GetSessionId())}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	d1, d2 := rawData(t, e, p, ctl, 1, 1), rawData(t, e, p, ctl, 2, 2)
	for s.Stats().Streams != 2 {
		if ctx.Err() != nil {
			t.Fatalf("data connections not attached: %+v", s.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	q := &rawPeer{t: t, c: d1, id: p.id}
	q.write(p.frame(frameData, laneBulk, 1, []byte("one")), p.frame(frameRetire, 0, 1, nil))
	d1.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hb [headerSize]byte
	var h header
	for h.typ != frameRetire {
		// Keepalive PINGs may come first.
		if _, err := io.ReadFull(d1, hb[:]); err != nil {
			t.Fatalf("no answer to RETIRE: %v", err)
		}
		if err := parseHeader(hb[:], &h); err != nil || h.typ != frameRetire && h.typ != framePing {
			t.Fatalf("answer %+v, %v; want the listener's RETIRE", h, err)
		}
	}
	if h.seq != 0 || h.dir != dirFromListener || h.session != p.id {
		t.Fatalf("answer %+v; want the listener's RETIRE naming message 0", h)
	}
	if n, err := d1.Read(hb[:1]); n != 0 || err == nil {
		t.Fatalf("the listener kept the retired connection open: read %d, %v", n, err)
	}
	(&rawPeer{t: t, c: d2, id: p.id}).write(p.frame(frameData, laneBulk, 2, []byte("two")))
	for _, want := range []string{"one", "two"} {
		if m, err := s.Recv(ctx); err != nil || string(m) != want {
			t.Fatalf("Recv = %q, %v; want %q", m, err, want)
		}
	}
	if st := s.Stats(); st.Streams != 1 || st.StreamsRetired != 1 || st.Connections != 2 || s.Err() != nil {
		t.Errorf("after the retirement: %+v, %v", st, s.Err())
	}
	// The number is free again: the dialer may attach it anew.
	rawData(t, e, p, ctl, 1, 3)
}

// TestHostileRetire: RETIREs that contradict the session end it.
func TestHostileRetire(t *testing.T) {
	cases := []struct {
		name  string
		caps  []string
		write func(p *rawPeer, data *rawPeer)
		text  string
	}{
		{"on the control connection", nil, func(p, _ *rawPeer) { p.write(p.frame(frameRetire, 0, 0, nil)) }, "control connection"},
		{"naming another last message", nil, func(p, d *rawPeer) {
			d.write(p.frame(frameData, laneBulk, 1, []byte("a")), p.frame(frameData, laneBulk, 2, []byte("b")), p.frame(frameRetire, 0, 1, nil))
		}, "but 2 arrived last"},
		{"from a peer without the capability", requiredV1, func(p, d *rawPeer) { d.write(p.frame(frameRetire, 0, 0, nil)) }, "without"},
		{"with a length", nil, func(p, d *rawPeer) { d.write(p.frame(frameRetire, 0, 0, []byte("x"))) }, "want 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { hostileDataConn(t, c.caps, c.write, ErrBadFrame, c.text) })
	}
}

// hostileDataConn opens a session as a raw peer announcing caps (nil:
// ours) with one data connection, lets write misbehave on it, and checks
// that the listener ends the session with want and says text, to the peer
// too.
func hostileDataConn(t *testing.T, caps []string, write func(p, data *rawPeer), want error, text string) {
	e := newEnv(t, ListenConfig{}, DialConfig{})
	if caps == nil {
		caps = ourCaps()
	}
	ctl := rawDial(t, e, "src")
	w := rawHello(t, ctl, openHello([]uint32{1}, caps))
	p := &rawPeer{t: t, c: ctl, id: [idSize]byte(w.GetSessionId())}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	d := &rawPeer{t: t, c: rawData(t, e, p, ctl, 1, 1), id: p.id}
	write(p, d)
	<-s.Done()
	if err := s.Err(); !errors.Is(err, want) || !strings.Contains(err.Error(), text) {
		t.Errorf("session error %v, want %v with %q", err, want, text)
	}
	if g := p.goaway(); !strings.Contains(g, text) {
		t.Errorf("GOAWAY %q, want %q", g, text)
	}
	// Hang up, so the session need not wait for it.
	ctl.Close()
	d.c.Close()
}

// TestHostilePad: PAD frames are only taken on a data connection, from a
// peer that announced them, within their size limit and with their CRC.
func TestHostilePad(t *testing.T) {
	pad := make([]byte, 100)
	cases := []struct {
		name  string
		caps  []string
		write func(p *rawPeer, data *rawPeer)
		want  error
		text  string
	}{
		{"on the control connection", nil, func(p, _ *rawPeer) { p.write(p.frame(framePad, 0, 0, pad)) }, ErrBadFrame, "PAD on the control connection"},
		{"from a peer without the capability", append(slices.Clone(requiredV1), capResize), func(p, d *rawPeer) { d.write(p.frame(framePad, 0, 0, pad)) }, ErrBadFrame, "without"},
		{"with a damaged payload", nil, func(p, d *rawPeer) {
			f := p.frame(framePad, 0, 0, pad)
			f[headerSize+7] ^= 1
			d.write(f)
		}, ErrBadChecksum, "PAD (100 bytes): crc32c"},
		{"over the size limit", nil, func(p, d *rawPeer) { d.write(p.frame(framePad, 0, 0, make([]byte, maxPadding+1))) }, ErrTooLarge, "PAD of 65537 bytes"},
		{"on the priority lane", nil, func(p, d *rawPeer) { d.write(p.frame(framePad, lanePriority, 0, pad)) }, ErrBadFrame, "lane bit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { hostileDataConn(t, c.caps, c.write, c.want, c.text) })
	}
}

// TestPadIsDropped: padding on a data connection delivers nothing, and the
// messages around it arrive as sent.
func TestPadIsDropped(t *testing.T) {
	cfg, err := Options{}.resolve(1)
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(false, fuzzID, "src", 1, ourCaps(), nil, cfg, 1,
		peerLimits{maxMsg: 4096, winMsgs: 16, winBytes: 16384, priMsgs: 4, priBytes: 4096})
	defer s.cancel()
	stream := bytes.Join([][]byte{fuzzFrame(framePad, 0, 0, make([]byte, padSize)), fuzzFrame(frameData, laneBulk, 1, []byte("one")),
		fuzzFrame(framePad, 0, 0, []byte("anything")), fuzzFrame(frameData, laneBulk, 2, []byte("two"))}, nil)
	r := bytes.NewReader(stream)
	var hb [headerSize]byte
	var h header
	ep := newEpoch(1)
	defer ep.cancel()
	c := &wconn{stream: 1}
	for r.Len() > 0 {
		if err := s.readFrame(ep, c, r, hb[:], &h); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, want := range []string{"one", "two"} {
		m, err := s.Recv(ctx)
		if err != nil || string(m) != want {
			t.Fatalf("Recv = %q, %v; want %q", m, err, want)
		}
	}
	if st := s.Stats(); st.MessagesReceived != 2 || st.BytesReceived != 6 {
		t.Errorf("stats after padding: %+v", st)
	}
}

// TestDialerRefusesAnUnaskedRetire: the listener never starts a
// retirement; a RETIRE on a connection the dialer did not retire is a
// protocol violation.
func TestDialerRefusesAnUnaskedRetire(t *testing.T) {
	cfg, err := Options{}.resolve(1)
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(true, fuzzID, "dst", 1, ourCaps(), nil, cfg, 1,
		peerLimits{maxMsg: 4096, winMsgs: 16, winBytes: 16384, priMsgs: 4, priBytes: 4096})
	defer s.cancel()
	f := make([]byte, headerSize)
	h := header{typ: frameRetire, dir: dirFromListener, session: fuzzID}
	putHeader(f, &h, 0)
	var hb [headerSize]byte
	c := &wconn{stream: 1}
	err = s.readFrame(newEpoch(1), c, strings.NewReader(string(f)), hb[:], &h)
	if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "did not retire") {
		t.Fatalf("unasked RETIRE: %v", err)
	}
	c.retiring = true
	if err := s.readFrame(newEpoch(1), c, strings.NewReader(string(f)), hb[:], &h); !errors.Is(err, errRetired) {
		t.Fatalf("RETIRE on a retiring connection: %v", err)
	}
}
