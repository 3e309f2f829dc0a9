package plugin

import (
	"context"
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/internal/shm"
)

var _ codec.Batcher = (*remoteCodec)(nil)

// The shm layer's batch geometry is the codec's.
const _ = uint(shm.MaxBatch-codec.MaxBatch) + uint(codec.MaxBatch-shm.MaxBatch)

// LeaseBatch implements codec.Batcher. On the shared-memory data plane it
// leases one slot and lays the blocks out in it (inputs from the start of
// the input region after the batch table, outputs likewise in the output
// region), so that Run is one request with one doorbell and one
// completion for all of them (shm.Lease.CallBatch). Without a slot (as for
// Lease) the Batch is private memory and Run takes bulkCall per block.
func (c *remoteCodec) LeaseBatch(size int) codec.Batch {
	b := &remoteBatch{c: c}
	b.reset()
	if b.lease, b.leased = c.tryLease(size, shm.BatchDataOffset); b.leased {
		return b
	}
	b.in = c.inst.buffers.get(max(size, 0))
	return b
}

// remoteBatch is one codec.Batch. Like remoteBuffer it is allocated per
// LeaseBatch and never pooled, so that a handle used after Release only
// sees its own released state. Its tables are arrays inside it, so a
// round of AddEncode, Run and Result allocates nothing on the slot path.
type remoteBatch struct {
	c      *remoteCodec
	lease  shm.Lease
	leased bool
	// Leased: the next free offsets in the slot's input and output
	// regions. Private: in holds the blocks built in Input.
	inUsed, outUsed uint32
	in, out         *[]byte // private memory (out: outputs of blocks run alone, lazily)

	n, slotted int // blocks queued; of which in the slot (entries)
	ran        bool
	released   bool
	blocks     [codec.MaxBatch]batchBlock
	entries    [codec.MaxBatch]shm.BatchEntry
	results    [codec.MaxBatch]shm.BatchResult
}

// batchBlock is one queued block: its op, and either its entry in the
// slot or (entry < 0) its source, to be run alone.
type batchBlock struct {
	op     uint32
	arg    int64
	maxOut int
	entry  int
	src    []byte
	out    []byte
	err    error
}

var errBatchRan = fmt.Errorf("codec batch already run; Reset it before adding blocks: %w", sdk.ErrInvalidArgument)

func (b *remoteBatch) reset() {
	clear(b.blocks[:b.n]) // drop references to sources and outputs
	b.n, b.slotted, b.ran = 0, 0, false
	b.inUsed, b.outUsed = shm.BatchDataOffset, shm.BatchDataOffset
	if b.in != nil {
		*b.in = (*b.in)[:0]
	}
	if b.out != nil {
		*b.out = (*b.out)[:0]
	}
}

func (b *remoteBatch) Input() []byte {
	switch {
	case b.released || b.ran:
		return nil
	case b.leased:
		in := b.lease.Input()
		return in[b.inUsed:b.inUsed:len(in)]
	}
	return (*b.in)[len(*b.in):len(*b.in):cap(*b.in)]
}

func (b *remoteBatch) AddEncode(src []byte, level int) error {
	return b.add(opEncode, int64(level), src, b.c.encodeMaxOut(len(src)))
}

func (b *remoteBatch) AddDecode(src []byte, maxSize int) error {
	if maxSize < 0 {
		return fmt.Errorf("codec batch decode: negative maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	return b.add(opDecode, 0, src, maxSize)
}

// add queues a block: into the slot when both its input and its whole
// output room fit what is left there (so that a TOO_LARGE answer is a
// real one, never the slot's), else to run alone at Run.
func (b *remoteBatch) add(op uint32, arg int64, src []byte, maxOut int) error {
	switch {
	case b.released:
		return errBufferReleased
	case b.ran:
		return errBatchRan
	case b.n == codec.MaxBatch:
		return fmt.Errorf("codec batch holds %d blocks already: %w", codec.MaxBatch, sdk.ErrInvalidArgument)
	}
	blk := &b.blocks[b.n]
	*blk = batchBlock{op: op, arg: arg, maxOut: maxOut, entry: -1}
	b.n++
	room := b.Input()
	inPlace := len(src) > 0 && len(src) <= cap(room) && &src[0] == &room[:1][0]
	if !b.leased {
		if inPlace {
			*b.in = (*b.in)[:len(*b.in)+len(src)]
		}
		blk.src = src
		return nil
	}
	_, slotOut := b.c.inst.dp.Limits()
	if len(src) > cap(room) || maxOut > slotOut-int(b.outUsed) {
		if inPlace {
			// Built in the slot but its output may not fit: it runs
			// alone from there, so later blocks must not overwrite it.
			b.inUsed += uint32(len(src))
		}
		blk.src = src
		return nil
	}
	if !inPlace {
		copy(room[:len(src)], src)
	}
	blk.entry = b.slotted
	b.entries[b.slotted] = shm.BatchEntry{Op: op, Arg: arg, InOff: b.inUsed, InLen: uint32(len(src)), OutOff: b.outUsed, OutCap: uint32(maxOut)}
	b.slotted++
	b.inUsed += uint32(len(src))
	b.outUsed += uint32(maxOut)
	return nil
}

func (b *remoteBatch) Len() int { return b.n }

func (b *remoteBatch) Run() error {
	switch {
	case b.released:
		return errBufferReleased
	case b.ran:
		return errBatchRan
	}
	b.ran = true
	inst := b.c.inst
	var batchErr error
	if b.slotted > 0 {
		// CallBatchTimeout, not a context.WithTimeout: nothing allocated.
		err := b.lease.CallBatchTimeout(context.Background(), inst.callTimeout, b.entries[:b.slotted], b.results[:b.slotted])
		batchErr = inst.annotate("batch", err)
	}
	for i := range b.blocks[:b.n] {
		blk := &b.blocks[i]
		name, open := "encode", b.c.client.Encode
		if blk.op == opDecode {
			name, open = "decode", b.c.client.Decode
		}
		if blk.entry >= 0 {
			if batchErr != nil {
				blk.err = batchErr
				continue
			}
			out, err := b.lease.BatchOutput(b.entries[blk.entry], b.results[blk.entry])
			blk.out, blk.err = out, inst.annotate(name, err)
			continue
		}
		if b.out == nil {
			b.out = inst.buffers.get(0)
		}
		// Appended after the earlier alone-run outputs: a reallocation
		// leaves their slices on the old array, still valid.
		start := len(*b.out)
		out, err := inst.bulkCall(name, blk.op, blk.arg, blk.src, *b.out, blk.maxOut, open)
		if err != nil {
			blk.err = err
			continue
		}
		*b.out = out
		blk.out = out[start:len(out):len(out)]
	}
	return batchErr
}

func (b *remoteBatch) Result(i int) ([]byte, error) {
	switch {
	case b.released:
		return nil, errBufferReleased
	case !b.ran || i < 0 || i >= b.n:
		return nil, fmt.Errorf("codec batch result %d of %d blocks (run: %v): %w", i, b.n, b.ran, sdk.ErrInvalidArgument)
	}
	return b.blocks[i].out, b.blocks[i].err
}

func (b *remoteBatch) Reset() {
	if !b.released {
		b.reset()
	}
}

func (b *remoteBatch) Release() {
	if b.released {
		return
	}
	b.reset()
	b.released = true
	if b.leased {
		b.lease.Release()
	}
	pool := &b.c.inst.buffers
	pool.put(b.in)
	pool.put(b.out)
	b.in, b.out = nil, nil
}
