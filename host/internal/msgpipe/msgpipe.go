// Package msgpipe is an in-process ordered message pipe with the
// pipeline's transport contract (pipeline.Conn: Send and Recv of whole
// messages), for tests of what runs over a transport session without the
// network. The transport has its own tests; end-to-end tests run both
// together. It owns no goroutines.
package msgpipe

import (
	"context"
	"io"
	"sync"
)

// End is one end of a pipe. Close closes the pipe for both ends; like
// TCP, what was sent before the close is still delivered.
type End struct {
	in     <-chan []byte
	out    chan<- []byte
	closed chan struct{}
	once   *sync.Once
	// Tamper, when set, rewrites each message this end sends (a copy);
	// returning nil drops it. Tests use it to corrupt or lose frames.
	Tamper func([]byte) []byte
}

// New returns the two ends of a pipe that buffers up to depth messages
// each way (a full pipe blocks Send, as a transport's window does).
func New(depth int) (*End, *End) {
	a, b := make(chan []byte, depth), make(chan []byte, depth)
	closed, once := make(chan struct{}), &sync.Once{}
	return &End{in: a, out: b, closed: closed, once: once}, &End{in: b, out: a, closed: closed, once: once}
}

// Send queues a copy of msg for the other end.
func (e *End) Send(ctx context.Context, msg []byte) error {
	msg = append([]byte(nil), msg...)
	if e.Tamper != nil {
		if msg = e.Tamper(msg); msg == nil {
			return nil
		}
	}
	// A closed pipe refuses even when its buffer has room (a select with
	// both ready would pick either).
	select {
	case <-e.closed:
		return io.ErrClosedPipe
	default:
	}
	select {
	case e.out <- msg:
		return nil
	case <-e.closed:
		return io.ErrClosedPipe
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Recv returns the next message from the other end.
func (e *End) Recv(ctx context.Context) ([]byte, error) {
	select {
	case msg := <-e.in:
		return msg, nil
	default:
	}
	select {
	case msg := <-e.in:
		return msg, nil
	case <-e.closed:
		return nil, io.ErrClosedPipe
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close closes the pipe.
func (e *End) Close() { e.once.Do(func() { close(e.closed) }) }
