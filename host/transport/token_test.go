package transport

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
	"google.golang.org/protobuf/proto"
)

// TestAttachTokenReplay steals the Attach of a real data connection and
// presents it again: on a new connection (the token is bound to the one
// it was made for), with a fresh token but a used counter, and from a host
// with another identity. All are refused and the session is unharmed.
func TestAttachTokenReplay(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	px := newProxy(t, e.ln.Addr().String())
	e.dial.Addr = px.addr()
	cli, srv := e.pair()

	var mu sync.Mutex
	var stolen []*pb.Hello
	hook := func(stream int, h *pb.Hello) {
		mu.Lock()
		stolen = append(stolen, proto.Clone(h).(*pb.Hello))
		mu.Unlock()
	}
	cli.dial.hook.Store(&hook)
	px.cut() // the resume that follows is observed
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for cli.Stats().Reconnects == 0 || cli.Stats().Connections != 3 {
		if ctx.Err() != nil {
			t.Fatal("no resume")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cli.dial.hook.Store(nil)
	mu.Lock()
	var data *pb.Hello
	for _, h := range stolen {
		if h.GetAttach().GetStream() == 1 {
			data = h
		}
	}
	mu.Unlock()
	if data == nil {
		t.Fatal("no data connection Attach observed")
	}

	refusal := func(host string, h *pb.Hello) string {
		t.Helper()
		w := rawHello(t, rawDial(t, e, host), h)
		if w.GetRefusal() == nil {
			t.Fatalf("attach accepted: %v", w)
		}
		return w.GetRefusal().GetMessage()
	}

	// 1. The very same bytes on another connection.
	if msg := refusal("src", data); !strings.Contains(msg, "does not verify") {
		t.Errorf("stolen token: %q", msg)
	}
	// 2. A token correctly bound to a new connection, with a used counter:
	// only someone with the key could make it, and it is still refused.
	c := rawDial(t, e, "src")
	a := proto.Clone(data).(*pb.Hello)
	at := a.GetAttach()
	tok, err := attachToken(srv.key, c.ConnectionState(), at.GetSessionId(), at.GetEpoch(), at.GetStream(), at.GetCounter())
	if err != nil {
		t.Fatal(err)
	}
	at.Token = tok
	if w := rawHello(t, c, a); !strings.Contains(w.GetRefusal().GetMessage(), "already used (replay)") {
		t.Errorf("replayed counter: %v", w)
	}
	// 3. A valid, fresh attach for a stream already attached: the token
	// passes, the listener still refuses to let it displace the real one.
	c = rawDial(t, e, "src")
	at.Counter = 1 << 40
	if at.Token, err = attachToken(srv.key, c.ConnectionState(), at.GetSessionId(), at.GetEpoch(), at.GetStream(), at.GetCounter()); err != nil {
		t.Fatal(err)
	}
	if w := rawHello(t, c, a); !strings.Contains(w.GetRefusal().GetMessage(), "already attached") {
		t.Errorf("duplicate stream: %v", w)
	}
	// 4. Another authenticated host presenting the stolen attach.
	if msg := refusal("mallory", data); !strings.Contains(msg, "belongs to another peer") {
		t.Errorf("other host: %q", msg)
	}
	// 5. An attach for a session that does not exist.
	a = proto.Clone(data).(*pb.Hello)
	a.GetAttach().SessionId = make([]byte, idSize)
	if msg := refusal("src", a); !strings.Contains(msg, "no session") {
		t.Errorf("unknown session: %q", msg)
	}

	// The session is unharmed.
	if err := cli.Send(ctx, []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if m, err := srv.Recv(ctx); err != nil || string(m) != "still here" {
		t.Fatalf("after the attacks: %q, %v", m, err)
	}
	// The listener counts a refusal just after writing it.
	for e.ln.Stats().HandshakeErrors < 5 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	if st := e.ln.Stats(); st.HandshakeErrors < 5 {
		t.Errorf("listener counted %d handshake errors, want at least 5", st.HandshakeErrors)
	}
}

func TestCounterWindow(t *testing.T) {
	s := &Session{ctrBits: 1}
	for _, c := range []struct {
		ctr  uint64
		want bool
	}{{0, false}, {3, true}, {1, true}, {2, true}, {3, false}, {1, false}, {100, true}, {37, true}, {37, false}, {36, false}, {30, false}, {1 << 20, true}, {100, false}} {
		if got := s.useCounterLocked(c.ctr); got != c.want {
			t.Errorf("counter %d: %v, want %v", c.ctr, got, c.want)
		}
	}
}
