package pipeline

import (
	"context"
	"errors"
	"io"
	"time"

	"golang.org/x/sync/errgroup"
)

// chunkReader reads the input on its own goroutine so that the segmenter
// can tell "nothing buffered right now" (the live stream paused) from
// "more is already here", and flush a partial batch only in the first case.
type chunkReader struct {
	ctx     context.Context
	chunks  chan []byte
	free    chan []byte
	cur     []byte
	curBuf  []byte
	err     error
	onStall func()
}

const chunkSize = 256 << 10

// newChunkReader starts the reading goroutine in g. When ctx ends, an input
// that supports read deadlines (sockets, pipes) is unblocked at once.
func newChunkReader(ctx context.Context, in io.Reader, g *errgroup.Group) *chunkReader {
	r := &chunkReader{ctx: ctx, chunks: make(chan []byte, 4), free: make(chan []byte, 6)}
	for range 6 {
		r.free <- make([]byte, chunkSize)
	}
	type deadliner interface{ SetReadDeadline(time.Time) error }
	stop := func() bool { return false }
	if d, ok := in.(deadliner); ok {
		stop = context.AfterFunc(ctx, func() { _ = d.SetReadDeadline(time.Now()) })
	}
	g.Go(func() error {
		// The deadline is set while this goroutine may still read, and
		// no longer once it is done. (Stopping it when ctx ended instead
		// raced with the deadline itself: when the stop won, a Read
		// blocked on an input that never delivered, such as a QEMU that
		// was never told to migrate, was never unblocked.)
		defer stop()
		defer close(r.chunks)
		for {
			var buf []byte
			select {
			case buf = <-r.free:
			case <-ctx.Done():
				return nil
			}
			n, err := in.Read(buf)
			if n > 0 {
				select {
				case r.chunks <- buf[:n]:
				case <-ctx.Done():
					return nil
				}
			} else {
				r.free <- buf
			}
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err // read by the consumer after chunks closes
				}
				return nil
			}
		}
	})
	return r
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.cur) == 0 {
		if r.curBuf != nil {
			r.free <- r.curBuf[:cap(r.curBuf)]
			r.curBuf = nil
		}
		var ok bool
		select {
		case r.cur, ok = <-r.chunks:
		default:
			if r.onStall != nil {
				r.onStall()
			}
			select {
			case r.cur, ok = <-r.chunks:
			case <-r.ctx.Done():
				return 0, r.ctx.Err()
			}
		}
		if !ok {
			if r.err != nil {
				return 0, r.err
			}
			return 0, io.EOF
		}
		r.curBuf = r.cur
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}
