package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

// exchange runs count messages each way at once, plus priority messages
// each way, and checks every byte on both sides.
func exchange(t *testing.T, cli, srv *Session, count, maxSize int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var g group
	const prio = 50
	for _, side := range []struct {
		name     string
		local    *Session
		txStream uint64
		rxStream uint64
	}{{"src", cli, 1, 2}, {"dst", srv, 2, 1}} {
		g.Go(func() error {
			for i := range prio {
				if err := side.local.SendPriority(ctx, message(side.txStream+10, uint64(i), 512)); err != nil {
					return fmt.Errorf("%s send priority: %w", side.name, err)
				}
			}
			if err := sendN(ctx, side.local, side.txStream, count, maxSize); err != nil {
				return fmt.Errorf("%s send: %w", side.name, err)
			}
			return side.local.CloseWrite(ctx)
		})
		g.Go(func() error {
			n, err := recvAll(ctx, side.local, side.rxStream, maxSize)
			if err != nil {
				return fmt.Errorf("%s recv: %w", side.name, err)
			}
			if n != count {
				return fmt.Errorf("%s received %d messages, want %d", side.name, n, count)
			}
			return nil
		})
		g.Go(func() error {
			for i := range prio {
				m, err := side.local.RecvPriority(ctx)
				if err != nil {
					return fmt.Errorf("%s recv priority %d: %w", side.name, i, err)
				}
				if err := checkMessage(side.rxStream+10, uint64(i), 512, m); err != nil {
					return fmt.Errorf("%s priority %d: %w", side.name, i, err)
				}
			}
			if _, err := side.local.RecvPriority(ctx); !errors.Is(err, io.EOF) {
				return fmt.Errorf("%s priority lane after the last message: %v, want io.EOF", side.name, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, streams := range []int{1, 4} {
		t.Run(fmt.Sprintf("streams=%d", streams), func(t *testing.T) {
			e := newEnv(t, ListenConfig{}, DialConfig{Streams: streams})
			cli, srv := e.pair()
			exchange(t, cli, srv, 400, 64<<10)
			for _, s := range []*Session{cli, srv} {
				st := s.Stats()
				if st.MessagesSent != 450 || st.MessagesReceived != 450 {
					t.Errorf("stats: sent %d received %d messages, want 450 each", st.MessagesSent, st.MessagesReceived)
				}
				if st.Connections != streams+1 {
					t.Errorf("stats: %d connections, want %d", st.Connections, streams+1)
				}
				if st.WireBytesSent < st.BytesSent || st.WireBytesReceived < st.BytesReceived {
					t.Errorf("stats: wire bytes %d/%d below payload bytes %d/%d", st.WireBytesSent, st.WireBytesReceived, st.BytesSent, st.BytesReceived)
				}
				if st.UnackedMessages != 0 || st.UnackedBytes != 0 {
					t.Errorf("stats: %d messages / %d bytes unacknowledged after CloseWrite", st.UnackedMessages, st.UnackedBytes)
				}
				if st.RTT <= 0 || st.RTT > time.Second {
					t.Errorf("stats: RTT %v", st.RTT)
				}
			}
			if cli.PeerName() != "dst" || srv.PeerName() != "src" {
				t.Errorf("peer names %q / %q", cli.PeerName(), srv.PeerName())
			}
			if cli.Version() != 1 || srv.Version() != 1 {
				t.Errorf("versions %d / %d", cli.Version(), srv.Version())
			}
			// A clean close on both sides.
			cli.Close()
			<-srv.Done()
			if err := srv.Err(); !errors.Is(err, ErrPeerClosed) {
				t.Errorf("server after client close: %v", err)
			}
			if _, err := srv.Recv(context.Background()); !errors.Is(err, io.EOF) {
				t.Errorf("server Recv after drained close: %v, want io.EOF", err)
			}
		})
	}
}

// RecvBuffer lends the session's buffers: a message held (not yet
// released) keeps its bytes while later messages arrive, and released
// buffers carry later messages intact.
func TestRecvBuffer(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 2})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const count, maxSize, holding = 400, 256 << 10, 3
	sent := make(chan error, 1)
	go func() {
		err := sendN(ctx, cli, 1, count, maxSize)
		if err == nil {
			err = cli.CloseWrite(ctx)
		}
		sent <- err
	}()
	type held struct {
		i       uint64
		msg     []byte
		release func()
	}
	var window []held
	for i := uint64(0); ; i++ {
		msg, release, err := srv.RecvBuffer(ctx)
		if errors.Is(err, io.EOF) {
			if i != count {
				t.Fatalf("EOF after %d messages, want %d", i, count)
			}
			break
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		window = append(window, held{i, msg, release})
		for _, h := range window {
			if err := checkMessage(1, h.i, maxSize, h.msg); err != nil {
				t.Fatalf("message %d, checked while message %d arrived: %v", h.i, i, err)
			}
		}
		if len(window) == holding {
			window[0].release()
			window = window[1:]
		}
	}
	for _, h := range window {
		h.release()
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
}
