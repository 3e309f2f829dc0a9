package msgpipe

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestPipeDeliversInOrderThenClosed(t *testing.T) {
	ctx := context.Background()
	a, b := New(4)
	msg := []byte("one")
	if err := a.Send(ctx, msg); err != nil {
		t.Fatal(err)
	}
	msg[0] = 'X' // the pipe sent a copy
	a.Tamper = func(m []byte) []byte {
		if bytes.Equal(m, []byte("drop")) {
			return nil
		}
		return append(m, '!')
	}
	for _, m := range []string{"drop", "two"} {
		if err := a.Send(ctx, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	for _, want := range []string{"one", "two!"} {
		got, err := b.Recv(ctx)
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := b.Recv(ctx); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("after the close: %v", err)
	}
	if err := b.Send(ctx, nil); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("send after the close: %v", err)
	}
	c, _ := New(0)
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := c.Send(tctx, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("send into a full pipe: %v", err)
	}
}
