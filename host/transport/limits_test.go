package transport

import (
	"context"
	"errors"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestListenerLimits(t *testing.T) {
	t.Run("sessions per peer", func(t *testing.T) {
		e := newEnv(t, ListenConfig{MaxSessionsPerPeer: 1}, DialConfig{Streams: 1})
		e.pair()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := Dial(ctx, e.dial)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "already has 1 sessions") {
			t.Fatalf("second session: %v", err)
		}
		if lerr := e.listenerError(t, "already has 1 sessions"); !errors.Is(lerr, ErrRefused) {
			t.Errorf("listener: %v", lerr)
		}
	})
	t.Run("handshake timeout and concurrent handshakes", func(t *testing.T) {
		// Two slots: a dialer's data connection may arrive while its
		// control connection still holds one.
		e := newEnv(t, ListenConfig{MaxHandshakes: 2, Options: Options{HandshakeTimeout: 300 * time.Millisecond}}, DialConfig{Streams: 1})
		// Connections that never speak hold both handshake slots...
		silent := e.silentConns(t, 2)
		idle, idle2 := silent[0], silent[1]
		// ...so the next one is closed at once.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := Dial(ctx, e.dial); err == nil {
			t.Fatal("dial succeeded with the handshake slots full")
		}
		if st := e.ln.Stats(); st.Busy == 0 {
			t.Errorf("listener stats %+v: no connection refused as busy", st)
		}
		// The silent one is dropped after the handshake timeout.
		idle.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := idle.Read(make([]byte, 1)); err == nil {
			t.Error("silent connection not closed")
		}
		idle2.SetReadDeadline(time.Now().Add(5 * time.Second))
		idle2.Read(make([]byte, 1))
		var sawTimeout bool
		for range 4 {
			if err := e.listenerError(t, ""); strings.Contains(err.Error(), "timeout") {
				sawTimeout = true
				break
			}
		}
		if !sawTimeout {
			t.Error("listener reported no handshake timeout")
		}
		// With the slot free again, a real dialer gets through.
		s, err := Dial(ctx, e.dial)
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
	})
	t.Run("idle timeout", func(t *testing.T) {
		opts := Options{IdleTimeout: 300 * time.Millisecond, PingInterval: 50 * time.Millisecond, ResumeWindow: 200 * time.Millisecond}
		e := newEnv(t, ListenConfig{Options: opts}, DialConfig{})
		// A peer that opens a session and then says nothing, not even PING.
		_, s := openRaw(t, e)
		select {
		case <-s.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("silent peer kept its session")
		}
		if err := s.Err(); !errors.Is(err, ErrLinkDown) || !strings.Contains(err.Error(), "timeout") {
			t.Errorf("session error: %v", err)
		}
	})
	t.Run("idle but alive", func(t *testing.T) {
		// PINGs keep a session without traffic alive past the idle timeout.
		opts := Options{IdleTimeout: 300 * time.Millisecond, PingInterval: 50 * time.Millisecond}
		e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 2, Options: opts})
		cli, srv := e.pair()
		// Three idle timeouts without traffic: neither side may end.
		select {
		case <-cli.Done():
		case <-srv.Done():
		case <-time.After(3 * opts.IdleTimeout):
		}
		if cli.Err() != nil || srv.Err() != nil || cli.Stats().Epoch != 1 {
			t.Fatalf("idle session broke: %v / %v, epoch %d", cli.Err(), srv.Err(), cli.Stats().Epoch)
		}
	})
}

// TestSocketBuffers: the requested size reaches the data connections and
// Stats reports what the kernel granted (Linux doubles, capped at
// net.core.*mem_max).
func TestSocketBuffers(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("kernel accounting checked on Linux only")
	}
	maxOf := func(name string) int {
		b, err := os.ReadFile("/proc/sys/net/core/" + name)
		if err != nil {
			t.Skip(err)
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	wmax, rmax := maxOf("wmem_max"), maxOf("rmem_max")
	for _, c := range []struct {
		name string
		opts Options
		want int
	}{
		{"explicit", Options{SocketBuffer: 256 << 10}, 256 << 10},
		// 1 Gbit/s at 80 ms over 2 connections: 5 MB each, above the cap.
		{"bandwidth-delay product", Options{ExpectedRate: 125e6, ExpectedRTT: 80 * time.Millisecond}, 5e6},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, ListenConfig{Options: c.opts}, DialConfig{Streams: 2, Options: c.opts})
			cli, _ := e.pair()
			st := cli.Stats()
			if st.SocketBufferRequested != c.want {
				t.Errorf("requested %d, want %d", st.SocketBufferRequested, c.want)
			}
			if want := 2 * min(c.want, wmax); st.SocketSendBuffer != want {
				t.Errorf("SO_SNDBUF %d, want %d (wmem_max %d)", st.SocketSendBuffer, want, wmax)
			}
			if want := 2 * min(c.want, rmax); st.SocketRecvBuffer != want {
				t.Errorf("SO_RCVBUF %d, want %d (rmem_max %d)", st.SocketRecvBuffer, want, rmax)
			}
		})
	}
}
