package transport

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// buffer is a pooled byte slice with a reference count: a frame queued for
// sending is held by its send-window slot and, while a writer puts it on a
// connection, by that writer; whichever lets go last returns it.
type buffer struct {
	b    []byte
	refs atomic.Int32
}

// Size classes are powers of two from 512 B up to what the largest frame
// needs, so steady traffic recycles buffers instead of allocating one per
// message.
const (
	minClass   = 9
	numClasses = 28 - minClass
)

var pools [numClasses]sync.Pool

func classOf(n int) int {
	if n <= 1<<minClass {
		return 0
	}
	return bits.Len(uint(n-1)) - minClass
}

// getBuffer returns a buffer with len(b) == n and one reference.
func getBuffer(n int) *buffer {
	c := classOf(n)
	if c >= numClasses {
		b := &buffer{b: make([]byte, n)}
		b.refs.Store(1)
		return b
	}
	if v := pools[c].Get(); v != nil {
		b := v.(*buffer)
		b.b = b.b[:n]
		b.refs.Store(1)
		return b
	}
	b := &buffer{b: make([]byte, n, 1<<(c+minClass))}
	b.refs.Store(1)
	return b
}

func (b *buffer) ref() { b.refs.Add(1) }

// release drops one reference; the last one returns the buffer to its pool.
func (b *buffer) release() {
	if b.refs.Add(-1) != 0 {
		return
	}
	c := classOf(cap(b.b))
	if c < numClasses && cap(b.b) == 1<<(c+minClass) {
		pools[c].Put(b)
	}
}
