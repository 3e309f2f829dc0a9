package transport

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The data connections of a new session dial (TCP and TLS) while the
// control connection opens it, not after: the control connection here
// reads nothing (so cannot finish its TLS handshake) until all four data
// connections have started to dial, which only happens if they go first.
// (Dialled after, they would never start, and the control connection
// would give up waiting after 10 s.)
func TestDataConnectionsDialWhileTheSessionOpens(t *testing.T) {
	const streams = 4
	var dials atomic.Int32
	allStarted := make(chan struct{})
	var sawAll atomic.Bool
	var nd net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		n := dials.Add(1)
		if n == streams+1 {
			close(allStarted)
		}
		c, err := nd.DialContext(ctx, network, addr)
		if err != nil || n != 1 {
			return c, err
		}
		// The first dial of a session is its control connection.
		return &heldConn{Conn: c, hold: func() {
			select {
			case <-allStarted:
				sawAll.Store(true)
			case <-time.After(10 * time.Second):
			}
		}}, nil
	}
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: streams, Dial: dial})
	cli, srv := e.pair()
	if !sawAll.Load() {
		t.Fatalf("the control connection shook hands before the data connections started (%d dials)", dials.Load())
	}
	if got := cli.Stats().Streams; got != streams {
		t.Errorf("%d data connections up, want %d", got, streams)
	}
	exchange(t, cli, srv, 200, 64<<10)
}

// heldConn runs hold before its first Read.
type heldConn struct {
	net.Conn
	once sync.Once
	hold func()
}

func (h *heldConn) Read(p []byte) (int, error) {
	h.once.Do(h.hold)
	return h.Conn.Read(p)
}

// A listener with two handshake slots, one held by a connection that never
// speaks: the control connection takes the other, so the data connection
// dialled early is closed at once (the listener counts it busy). It is
// dialled again once the session is open, and the session opens with it.
func TestEarlyDataConnectionsRetryOnABusyListener(t *testing.T) {
	e := newEnv(t, ListenConfig{MaxHandshakes: 2, Options: Options{HandshakeTimeout: 2 * time.Second}}, DialConfig{Streams: 1})
	e.silentConns(t, 1)
	cli, srv := e.pair()
	if got := cli.Stats().Streams; got != 1 {
		t.Errorf("%d data connections up, want 1", got)
	}
	t.Logf("listener: %+v", e.ln.Stats())
	exchange(t, cli, srv, 100, 64<<10)
}

// A listener that refuses the session (here: more data connections than
// it takes) leaves nothing of the early data connections: they close
// without sending a Hello, and Dial returns the refusal. (goleak in
// TestMain checks that none of their goroutines outlives the test.)
func TestEarlyDataConnectionsCloseWhenTheSessionIsRefused(t *testing.T) {
	var dials atomic.Int32
	var nd net.Dialer
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return nd.DialContext(ctx, network, addr)
	}
	e := newEnv(t, ListenConfig{MaxStreams: 2}, DialConfig{Streams: 4, Dial: dial})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := e.dial
	s, err := Dial(ctx, cfg)
	if err == nil {
		s.Close()
		t.Fatal("a session of 4 data connections opened on a listener that takes 2")
	}
	if !isLimitRefusal(err) {
		t.Fatalf("dial: %v, want the listener's limit refusal", err)
	}
	if n := dials.Load(); n != 5 {
		t.Errorf("%d dials, want the control connection and 4 early data connections", n)
	}
}
