package pipeline

import (
	"context"
	"os"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// A Read blocked on an input that never delivers (a QEMU that was never
// told to migrate) ends when the context does, every time: the read
// deadline must not lose a race with its own cleanup. Many rounds, since
// the lost race was a scheduling accident (a CI run hung 9 minutes in
// host/migrate on it).
func TestChunkReaderUnblocksOnCancel(t *testing.T) {
	for i := range 300 {
		rp, wp, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		g, gctx := errgroup.WithContext(ctx)
		r := newChunkReader(gctx, rp, g)
		cancel()
		done := make(chan error, 1)
		go func() { done <- g.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the reader is still blocked 5 s after the cancel", i)
		}
		if _, err := r.Read(make([]byte, 1)); err == nil {
			t.Fatalf("round %d: a read after the cancel returned data", i)
		}
		rp.Close()
		wp.Close()
	}
}
