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
