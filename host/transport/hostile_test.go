package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// rawPeer speaks the wire format directly, with a valid certificate.
type rawPeer struct {
	t  *testing.T
	c  *tls.Conn
	id [idSize]byte
}

func rawDial(t *testing.T, e *env, host string) *tls.Conn {
	t.Helper()
	_, cli := testPKI(t).configs(host)
	cli.ServerName = "dst"
	c, err := tls.Dial("tcp", e.ln.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rawHello(t *testing.T, c *tls.Conn, h *pb.Hello) *pb.Welcome {
	t.Helper()
	if err := writeHandshake(c, h); err != nil {
		t.Fatal(err)
	}
	body, err := readHandshakeBody(c)
	if err != nil {
		t.Fatal(err)
	}
	w, err := decodeWelcome(body)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func openHello(versions []uint32, caps []string) *pb.Hello {
	return &pb.Hello{Versions: versions, Capabilities: caps, Purpose: &pb.Hello_Open{Open: &pb.Open{
		Streams: 1, Limits: &pb.Limits{MaxMessage: 1 << 16, WindowMessages: 64, WindowBytes: 1 << 20,
			PriorityWindowMessages: 16, PriorityWindowBytes: 1 << 16}}}}
}

func rawOpen(t *testing.T, e *env, versions []uint32, caps []string) *pb.Welcome {
	t.Helper()
	return rawHello(t, rawDial(t, e, "src"), openHello(versions, caps))
}

// openRaw opens a session by hand and accepts it on the listener.
func openRaw(t *testing.T, e *env) (*rawPeer, *Session) {
	t.Helper()
	c := rawDial(t, e, "src")
	w := rawHello(t, c, openHello([]uint32{1}, requiredV1))
	if w.GetRefusal() != nil {
		t.Fatal(w.GetRefusal())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &rawPeer{t: t, c: c, id: [idSize]byte(w.GetSessionId())}, s
}

// frame builds a dialer-to-listener frame.
func (p *rawPeer) frame(typ frameType, lane uint8, seq uint64, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	copy(b[headerSize:], payload)
	h := header{typ: typ, dir: dirFromDialer, lane: lane, session: p.id, seq: seq, length: uint32(len(payload))}
	putHeader(b, &h, crc32Of(payload))
	return b
}

func (p *rawPeer) write(b ...[]byte) {
	for _, x := range b {
		if _, err := p.c.Write(x); err != nil {
			p.t.Fatal(err)
		}
	}
}

// goaway reads frames until a GOAWAY and returns its text.
func (p *rawPeer) goaway() string {
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hb [headerSize]byte
	for {
		if _, err := io.ReadFull(p.c, hb[:]); err != nil {
			p.t.Fatalf("no GOAWAY: %v", err)
		}
		var h header
		if err := parseHeader(hb[:], &h); err != nil {
			p.t.Fatal(err)
		}
		body := make([]byte, h.length)
		if _, err := io.ReadFull(p.c, body); err != nil {
			p.t.Fatal(err)
		}
		if h.typ == frameGoaway {
			return string(body)
		}
	}
}

func TestHostilePeer(t *testing.T) {
	cases := []struct {
		name    string
		frames  func(p *rawPeer) [][]byte
		want    error
		text    string   // in the session's error and the GOAWAY
		deliver []string // what Recv may return before the error
	}{
		{
			name: "tampered CRC",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(frameData, laneBulk, 1, []byte("payload"))
				f[33] ^= 0x40
				return [][]byte{f}
			},
			want: ErrBadChecksum, text: "crc32c",
		},
		{
			name: "tampered payload",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(frameData, laneBulk, 1, []byte("payload"))
				f[headerSize] = 'P'
				return [][]byte{f}
			},
			want: ErrBadChecksum, text: "crc32c",
		},
		{
			name: "replayed sequence with different content",
			frames: func(p *rawPeer) [][]byte {
				return [][]byte{p.frame(frameData, laneBulk, 1, []byte("first")), p.frame(frameData, laneBulk, 1, []byte("other"))}
			},
			want: ErrReplayMismatch, text: "message 1", deliver: []string{"first"},
		},
		{
			name: "sequence far ahead",
			frames: func(p *rawPeer) [][]byte {
				return [][]byte{p.frame(frameData, laneBulk, DefaultWindowMessages+5, []byte("x"))}
			},
			want: ErrOutOfWindow, text: "ahead of the window",
		},
		{
			name: "wrong session id",
			frames: func(p *rawPeer) [][]byte {
				q := *p
				q.id[0] ^= 1
				return [][]byte{q.frame(frameData, laneBulk, 1, []byte("x"))}
			},
			want: ErrWrongSession, text: "for session",
		},
		{
			name: "oversized length",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(frameData, laneBulk, 1, nil)
				h := header{typ: frameData, dir: dirFromDialer, session: p.id, seq: 1, length: DefaultMaxMessage + 1}
				putHeader(f, &h, 0)
				return [][]byte{f}
			},
			want: ErrTooLarge, text: "limit",
		},
		{
			name: "ack of a message never sent",
			frames: func(p *rawPeer) [][]byte {
				return [][]byte{p.frame(frameAck, laneBulk, 3, nil)}
			},
			want: ErrBadFrame, text: "last sent is 0",
		},
		{
			name: "reflected direction",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(frameData, laneBulk, 1, []byte("x"))
				h := header{typ: frameData, dir: dirFromListener, session: p.id, seq: 1, length: 1}
				putHeader(f, &h, crc32Of([]byte("x")))
				return [][]byte{f}
			},
			want: ErrBadFrame, text: "own direction",
		},
		{
			name: "unknown frame type",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(frameData, laneBulk, 1, nil)
				f[1] = 99
				return [][]byte{f}
			},
			want: ErrBadFrame, text: "unknown",
		},
		{
			name: "control frame with a length",
			frames: func(p *rawPeer) [][]byte {
				f := p.frame(framePing, 0, 1, []byte("zz"))
				return [][]byte{f}
			},
			want: ErrBadFrame, text: "want 0",
		},
		{
			name: "data after end of stream",
			frames: func(p *rawPeer) [][]byte {
				return [][]byte{p.frame(frameData, laneBulk, 1, []byte("a")), p.frame(frameFin, laneBulk, 1, nil),
					p.frame(frameData, laneBulk, 2, []byte("b"))}
			},
			want: ErrOutOfWindow, text: "after end of stream", deliver: []string{"a"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, ListenConfig{}, DialConfig{})
			p, s := openRaw(t, e)
			p.write(c.frames(p)...)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var got []string
			var err error
			for {
				var m []byte
				if m, err = s.Recv(ctx); err != nil {
					break
				}
				got = append(got, string(m))
			}
			if errors.Is(err, io.EOF) {
				// The peer ended its stream cleanly before it misbehaved:
				// the application saw a clean end; the session still
				// failed.
				<-s.Done()
				err = s.Err()
			}
			if !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), c.text) {
				t.Errorf("session error %v\nwant %v containing %q", err, c.want, c.text)
			}
			if strings.Join(got, ",") != strings.Join(c.deliver, ",") {
				t.Errorf("delivered %q, want %q", got, c.deliver)
			}
			if g := p.goaway(); !strings.Contains(g, c.text) {
				t.Errorf("GOAWAY told the peer %q, want %q", g, c.text)
			}
		})
	}
}

// TestExactDuplicateDropped: a replay of exactly what was sent is the
// protocol working; it is dropped silently.
func TestExactDuplicateDropped(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{})
	p, s := openRaw(t, e)
	one, two := p.frame(frameData, laneBulk, 1, []byte("one")), p.frame(frameData, laneBulk, 2, []byte("two"))
	p.write(two, one, two, one, p.frame(frameFin, laneBulk, 2, nil), p.frame(frameFin, lanePriority, 0, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, want := range []string{"one", "two"} {
		m, err := s.Recv(ctx)
		if err != nil || string(m) != want {
			t.Fatalf("Recv = %q, %v; want %q", m, err, want)
		}
	}
	p.write(one) // behind the consumer now: still an exact duplicate
	if _, err := s.Recv(ctx); !errors.Is(err, io.EOF) {
		t.Fatalf("Recv after the last message: %v, want io.EOF", err)
	}
	if st := s.Stats(); st.DuplicatesDropped != 3 && st.DuplicatesDropped != 2 {
		t.Errorf("%d duplicates dropped, want 2 or 3", st.DuplicatesDropped)
	}
	if s.Err() != nil {
		t.Errorf("session failed: %v", s.Err())
	}
}

// TestTruncatedMessage: a message cut off by the connection's end is never
// delivered; the link error names it, and with no resume the session ends
// with ErrLinkDown.
func TestTruncatedMessage(t *testing.T) {
	e := newEnv(t, ListenConfig{Options: Options{ResumeWindow: 200 * time.Millisecond}}, DialConfig{})
	p, s := openRaw(t, e)
	f := p.frame(frameData, laneBulk, 1, make([]byte, 1000))
	p.write(f[:headerSize+10])
	p.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := s.Recv(ctx)
	if !errors.Is(err, ErrLinkDown) {
		t.Fatalf("Recv = %d bytes, %v; want ErrLinkDown", len(m), err)
	}
	if !strings.Contains(err.Error(), "truncated after 10 of 1000 payload bytes") {
		t.Errorf("error does not say what was truncated: %v", err)
	}
	if st := s.Stats(); st.MessagesReceived != 0 {
		t.Errorf("%d messages delivered", st.MessagesReceived)
	}
}
