package plugin

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
	"github.com/dwcp/dwcp/sdk/internal/shm"
)

var _ codec.Leaser = (*remoteCodec)(nil)

// Lease implements codec.Leaser. On the shared-memory data plane it leases
// a slot: the caller builds its block in the slot's input region and gets
// the output as a view of the slot's output region, so the host copies
// nothing. Without a free slot (leases are capped below the slot count,
// see shm.ClientOptions.Leases), with a block larger than a slot, or on
// the gRPC fallback, the Buffer is private memory from a pool and Encode
// and Decode take the same path as Codec.Encode and Codec.Decode.
func (c *remoteCodec) Lease(size int) codec.Buffer {
	b := &remoteBuffer{c: c}
	if b.lease, b.leased = c.tryLease(size, 0); b.leased {
		return b
	}
	b.in = c.inst.buffers.get(max(size, 0))
	return b
}

// tryLease takes a free slot for size bytes of input plus overhead bytes
// the caller keeps in the slot's input region (a batch's tables), when the
// shared-memory channel is up and the input fits.
func (c *remoteCodec) tryLease(size, overhead int) (shm.Lease, bool) {
	dp := c.inst.dp
	if dp == nil || size < 0 {
		return shm.Lease{}, false
	}
	if maxIn, _ := dp.Limits(); size > maxIn-overhead {
		return shm.Lease{}, false
	}
	return dp.TryLease()
}

// remoteBuffer is one codec.Buffer. It is allocated per Lease, never
// pooled, so that a handle used after Release can only ever see its own
// released state, never another caller's buffer.
type remoteBuffer struct {
	c        *remoteCodec
	lease    shm.Lease
	leased   bool
	in, out  *[]byte // private memory when not leased (out: lazily)
	released bool
}

var errBufferReleased = fmt.Errorf("codec buffer used after Release: %w", sdk.ErrInvalidArgument)

func (b *remoteBuffer) Input() []byte {
	switch {
	case b.released:
		return nil
	case b.leased:
		return b.lease.Input()[:0]
	}
	return (*b.in)[:0]
}

func (b *remoteBuffer) Encode(src []byte, level int) ([]byte, error) {
	if b.released {
		return nil, errBufferReleased
	}
	c := b.c
	return b.run("encode", opEncode, int64(level), src, c.encodeMaxOut(len(src)), c.client.Encode)
}

func (b *remoteBuffer) Decode(src []byte, maxSize int) ([]byte, error) {
	if b.released {
		return nil, errBufferReleased
	}
	if maxSize < 0 {
		return nil, fmt.Errorf("decode: negative maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	return b.run("decode", opDecode, 0, src, maxSize, b.c.client.Decode)
}

// run is bulkCall for a Buffer: in place in the leased slot when it can
// be, else through the private output buffer.
func (b *remoteBuffer) run(op string, dpOp uint32, arg int64, src []byte, maxOut int, open bidiOpener) ([]byte, error) {
	inst := b.c.inst
	if b.leased {
		in := b.lease.Input()
		if len(src) <= len(in) {
			if len(src) > 0 && &src[0] != &in[0] {
				// Built elsewhere (it outgrew Input and was reallocated,
				// or the caller passed other memory): one copy, as Encode
				// would make.
				copy(in, src)
			}
			_, slotOut := inst.dp.Limits()
			out, err := b.lease.CallTimeout(context.Background(), inst.callTimeout, dpOp, arg, len(src), min(maxOut, slotOut))
			var re *shm.RemoteError
			switch {
			case err == nil:
				return out, nil
			case errors.As(err, &re) && pb.ErrorCode(re.Code) == pb.ErrorCode_ERROR_CODE_TOO_LARGE && maxOut > slotOut:
				// The output outgrew the slot but not the caller's limit:
				// the stream has no slot limit.
				return b.private(inst.streamCall(op, dpOp, arg, src, b.outBuf(), maxOut, open))
			default:
				return nil, inst.annotate(op, err)
			}
		}
		// Larger than the slot: the stream takes it (bulkCall would find
		// no slot large enough either).
		return b.private(inst.streamCall(op, dpOp, arg, src, b.outBuf(), maxOut, open))
	}
	return b.private(inst.bulkCall(op, dpOp, arg, src, b.outBuf(), maxOut, open))
}

// outBuf returns the private output buffer, empty, taking one from the
// pool on first use.
func (b *remoteBuffer) outBuf() []byte {
	if b.out == nil {
		b.out = b.c.inst.buffers.get(0)
	}
	return (*b.out)[:0]
}

// private keeps a result that landed in the private output buffer (which
// it may have grown) so that it goes back to the pool on Release.
func (b *remoteBuffer) private(out []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	*b.out = out
	return out, nil
}

func (b *remoteBuffer) Release() {
	if b.released {
		return
	}
	b.released = true
	if b.leased {
		b.lease.Release()
	}
	pool := &b.c.inst.buffers
	pool.put(b.in)
	pool.put(b.out)
	b.in, b.out = nil, nil
}

// bufferPool recycles the private memory of Buffers that did not get a
// slot, so the fallback allocates nothing per block in steady state.
type bufferPool struct{ p sync.Pool }

// get returns a buffer with capacity for at least size bytes.
func (p *bufferPool) get(size int) *[]byte {
	if b, ok := p.p.Get().(*[]byte); ok {
		if cap(*b) >= size {
			return b
		}
		*b = make([]byte, 0, size)
		return b
	}
	b := make([]byte, 0, size)
	return &b
}

func (p *bufferPool) put(b *[]byte) {
	if b != nil {
		*b = (*b)[:0]
		p.p.Put(b)
	}
}
