package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestResumeUnderCuts cuts every connection 20 times, every 100-300 ms,
// while both sides stream at once. Every message must arrive once, in
// order, byte for byte.
func TestResumeUnderCuts(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 4})
	px := newProxy(t, e.ln.Addr().String())
	e.dial.Addr = px.addr()
	cli, srv := e.pair()

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	const maxSize = 48 << 10
	var stop atomic.Bool
	var sent [2]atomic.Int64
	var g group
	for k, s := range []*Session{cli, srv} {
		stream := uint64(k + 1)
		g.Go(func() error {
			i := 0
			var buf []byte
			for ; !stop.Load(); i++ {
				if i%8 == 7 {
					// About 80 MB/s per side: plenty in flight at every
					// cut without hogging a shared machine.
					time.Sleep(2 * time.Millisecond)
				}
				buf = appendMessage(buf, stream, uint64(i), maxSize)
				if err := s.Send(ctx, buf); err != nil {
					return fmt.Errorf("side %d send %d: %w", k, i, err)
				}
				if i%10 == 0 {
					if err := s.SendPriority(ctx, message(stream+10, uint64(i/10), 256)); err != nil {
						return fmt.Errorf("side %d send priority: %w", k, err)
					}
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
		// The lanes have separate windows: a consumer reads both.
		g.Go(func() error {
			for i := 0; ; i++ {
				m, err := s.RecvPriority(ctx)
				if errors.Is(err, io.EOF) {
					if want := (sent[1-k].Load() + 9) / 10; int64(i) != want {
						return fmt.Errorf("side %d: %d priority messages, want %d", k, i, want)
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
	r := rand.New(rand.NewPCG(1, 2))
	var lastCut time.Time
	var resumeTimes []time.Duration
	for i := range 20 {
		// Wait for the session to be whole again (the previous resume
		// done on both sides), so that every cut hits a running transfer.
		for cli.Stats().Connections != 5 || srv.Stats().Connections != 5 || cli.Stats().Reconnects != uint64(i) {
			if ctx.Err() != nil {
				t.Fatalf("cut %d: session not resumed: client %+v", i, cli.Stats())
			}
			time.Sleep(time.Millisecond)
		}
		if i > 0 {
			resumeTimes = append(resumeTimes, time.Since(lastCut))
		}
		// Let 1-4 MiB more arrive, so that every cut hits a transfer
		// in full flow at a random point.
		waitReceived(ctx, t, srv, uint64(1+r.IntN(4))<<20)
		px.cut()
		lastCut = time.Now()
	}
	t.Logf("cut to resumed: %v", resumeTimes)
	waitReceived(ctx, t, srv, 2<<20) // traffic flows after the last resume
	stop.Store(true)
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// The dialer counts a resume once its last data connection is up,
	// which can be a moment after traffic resumed.
	for cli.Stats().Reconnects < 20 && ctx.Err() == nil {
		time.Sleep(time.Millisecond)
	}
	cs, ss := cli.Stats(), srv.Stats()
	t.Logf("sent %d / %d messages; client %d reconnects, %d failed attempts, %d retransmitted messages (%d B), %d duplicates; server %d reconnects, %d retransmitted, %d duplicates",
		sent[0].Load(), sent[1].Load(), cs.Reconnects, cs.ResumeFailures, cs.RetransmittedMessages, cs.RetransmittedBytes,
		cs.DuplicatesDropped, ss.Reconnects, ss.RetransmittedMessages, ss.DuplicatesDropped)
	if cs.Reconnects != 20 || ss.Reconnects < 20 {
		t.Errorf("reconnects: client %d, server %d; want 20 (one per cut; the listener also counts resumes that a cut interrupted)", cs.Reconnects, ss.Reconnects)
	}
	if cs.Epoch != ss.Epoch {
		t.Errorf("epochs differ: client %d, server %d", cs.Epoch, ss.Epoch)
	}
	if sent[0].Load() < 100 || sent[1].Load() < 100 {
		t.Errorf("too little traffic to mean anything: %d / %d", sent[0].Load(), sent[1].Load())
	}
	if cs.LastLinkError == "" || ss.LastLinkError == "" {
		t.Error("no last link error recorded after cuts")
	}
}

// TestLinkDownTooLong takes the link down for longer than the resume
// window: both sides fail with ErrLinkDown, and say so.
func TestLinkDownTooLong(t *testing.T) {
	opts := Options{ResumeWindow: 400 * time.Millisecond}
	e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 2, Options: opts})
	px := newProxy(t, e.ln.Addr().String())
	e.dial.Addr = px.addr()
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := cli.Send(ctx, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if m, err := srv.Recv(ctx); err != nil || string(m) != "before" {
		t.Fatalf("recv %q, %v", m, err)
	}
	px.setDown(true)
	for name, s := range map[string]*Session{"dialer": cli, "listener": srv} {
		select {
		case <-s.Done():
		case <-ctx.Done():
			t.Fatalf("%s: session still alive with the link down", name)
		}
		err := s.Err()
		if !errors.Is(err, ErrLinkDown) || !strings.Contains(err.Error(), "resume window") {
			t.Errorf("%s: %v, want ErrLinkDown", name, err)
		}
		if _, err := s.Recv(ctx); !errors.Is(err, ErrLinkDown) {
			t.Errorf("%s: Recv: %v, want ErrLinkDown", name, err)
		}
		if err := s.Send(ctx, []byte("x")); !errors.Is(err, ErrLinkDown) {
			t.Errorf("%s: Send: %v, want ErrLinkDown", name, err)
		}
	}
	if st := cli.Stats(); st.ResumeFailures == 0 {
		t.Error("dialer never tried to resume")
	}
	if st := e.ln.Stats(); st.Sessions != 0 {
		t.Errorf("listener still tracks %d sessions", st.Sessions)
	}
}

// TestResumeAfterShortOutage: a link down for less than the window loses
// nothing, including messages sent while it was down.
func TestResumeAfterShortOutage(t *testing.T) {
	opts := Options{ResumeWindow: 5 * time.Second}
	e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 2, Options: opts})
	px := newProxy(t, e.ln.Addr().String())
	e.dial.Addr = px.addr()
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	px.setDown(true)
	for i := range 20 {
		if err := cli.Send(ctx, message(7, uint64(i), 4096)); err != nil {
			t.Fatal(err)
		}
	}
	// Keep the link down until the client has noticed and failed to
	// reconnect at least once.
	for cli.Stats().ResumeFailures == 0 {
		if ctx.Err() != nil {
			t.Fatalf("the outage was never noticed: %+v", cli.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	px.setDown(false)
	for i := range 20 {
		m, err := srv.Recv(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkMessage(7, uint64(i), 4096, m); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	// The dialer counts the resume once its last data connection is up,
	// which may be just after the first messages flowed.
	for cli.Stats().Reconnects == 0 {
		if ctx.Err() != nil {
			t.Fatal("no reconnect counted")
		}
		time.Sleep(time.Millisecond)
	}
}

// waitReceived waits until s has received n more payload bytes.
func waitReceived(ctx context.Context, t *testing.T, s *Session, n uint64) {
	t.Helper()
	target := s.Stats().BytesReceived + n
	for s.Stats().BytesReceived < target {
		if ctx.Err() != nil {
			t.Fatalf("transfer stalled: %+v", s.Stats())
		}
		time.Sleep(time.Millisecond)
	}
}
