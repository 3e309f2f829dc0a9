package transport

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

// TestBackpressure: the receiving application stops reading. Send blocks
// once the window is full, memory stays bounded by the window, and the
// blocked Send ends with its context.
func TestBackpressure(t *testing.T) {
	opts := Options{MaxMessage: 64 << 10, WindowBytes: 1 << 20, WindowMessages: 64}
	e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 2, Options: opts})
	cli, srv := e.pair()
	msg := make([]byte, 60<<10)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sent := 0
	for ; ; sent++ {
		sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := cli.Send(sctx, msg)
		scancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if sent > 1000 {
			t.Fatal("Send never blocked: no backpressure")
		}
	}
	st := cli.Stats()
	if st.UnackedBytes > 1<<20 || st.UnackedMessages > 64 {
		t.Errorf("unacknowledged %d bytes / %d messages beyond the window", st.UnackedBytes, st.UnackedMessages)
	}
	if want := (1 << 20) / (60 << 10); sent != want {
		t.Errorf("sent %d messages before blocking, want %d (the byte window)", sent, want)
	}
	// Keep trying for a while: nothing grows.
	for range 5 {
		sctx, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
		if err := cli.Send(sctx, msg); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Send with a full window: %v", err)
		}
		scancel()
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 8<<20 {
		t.Errorf("heap grew by %d bytes with a 1 MiB window", grown)
	}
	// Once the receiver reads again, everything flows.
	for range sent {
		if _, err := srv.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := cli.Send(ctx, msg); err != nil {
		t.Fatalf("Send after the receiver caught up: %v", err)
	}
	if _, err := srv.Recv(ctx); err != nil {
		t.Fatal(err)
	}
	// Too large for the peer: refused at once.
	if err := cli.Send(ctx, make([]byte, 64<<10+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized Send: %v", err)
	}
}

// TestCloseWriteWaitsForConsumer: CloseWrite returns only once the peer's
// application took everything.
func TestCloseWriteWaitsForConsumer(t *testing.T) {
	e := newEnv(t, ListenConfig{}, DialConfig{Streams: 1})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 10 {
		if err := cli.Send(ctx, message(3, uint64(i), 1024)); err != nil {
			t.Fatal(err)
		}
	}
	short, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer scancel()
	if err := cli.CloseWrite(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("CloseWrite with nothing consumed: %v", err)
	}
	if err := cli.Send(ctx, []byte("late")); !errors.Is(err, ErrWriteClosed) {
		t.Errorf("Send after CloseWrite: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cli.CloseWrite(ctx) }()
	if n, err := recvAll(ctx, srv, 3, 1024); err != nil || n != 10 {
		t.Fatalf("received %d, %v", n, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("CloseWrite after the consumer drained: %v", err)
	}
}

// TestSendWindowCap: a sender's own cap holds it far below the peer's
// window, frequent acks keep a capped stream moving, and raising the cap
// releases a blocked Send.
func TestSendWindowCap(t *testing.T) {
	opts := Options{MaxMessage: 64 << 10, WindowBytes: 8 << 20, WindowMessages: 512}
	e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 1, Options: opts})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := make([]byte, 32<<10)
	cli.SetSendWindow(128 << 10)
	sent := 0
	for ; sent < 100; sent++ {
		sctx, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := cli.Send(sctx, msg)
		scancel()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if sent != 4 {
		t.Fatalf("sent %d messages of 32 KiB under a 128 KiB cap before blocking, want 4", sent)
	}
	if st := cli.Stats(); st.UnackedBytes > 128<<10 {
		t.Fatalf("%d bytes unacknowledged under a 128 KiB cap", st.UnackedBytes)
	}
	// Raising the cap lets a sender held by it go on (the loop above
	// showed that a Send blocks under the cap).
	done := make(chan error, 1)
	go func() { done <- cli.Send(ctx, msg) }()
	cli.SetSendWindow(0)
	if err := <-done; err != nil {
		t.Fatalf("Send after the cap was lifted: %v", err)
	}
	for range sent + 1 {
		if _, err := srv.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A capped stream keeps moving while the receiver consumes: 8 MiB
	// through a 128 KiB cap (acks come every 256 KiB consumed or when
	// the receiver has taken everything).
	cli.SetSendWindow(128 << 10)
	const total = 8 << 20
	recvd := make(chan error, 1)
	go func() {
		n := 0
		for n < total {
			m, err := srv.Recv(ctx)
			if err != nil {
				recvd <- err
				return
			}
			n += len(m)
		}
		recvd <- nil
	}()
	for n := 0; n < total; n += len(msg) {
		if err := cli.Send(ctx, msg); err != nil {
			t.Fatalf("capped stream stalled after %d bytes: %v", n, err)
		}
	}
	if err := <-recvd; err != nil {
		t.Fatal(err)
	}
}
