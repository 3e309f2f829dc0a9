// Package codec defines the interface of a DWCP codec plugin: a block
// compressor with numbered levels, mapped onto DWCP's three link tiers.
//
// It owns the contract only (interface, options, capability description,
// and the optional Leaser and Batcher capabilities for zero-copy and
// batched calls); it must not contain an implementation.
package codec

import "fmt"

// Codec compresses and decompresses self-contained blocks.
//
// Both methods are append-style: they append their output to dst and return
// the extended slice, so callers can reuse buffers. Implementations must be
// safe for concurrent use and must never panic on any input: a damaged
// block yields an error wrapping sdk.ErrCorruptInput.
type Codec interface {
	// Capabilities describes the codec; it is called once, cheaply.
	Capabilities() Capabilities
	// Encode appends the encoding of src at the given level to dst. A level
	// outside Capabilities().Levels yields sdk.ErrInvalidArgument.
	Encode(dst, src []byte, level int) ([]byte, error)
	// Decode appends the decoding of src to dst. If the decoded block would
	// exceed maxSize bytes it stops and returns sdk.ErrTooLarge.
	Decode(dst, src []byte, maxSize int) ([]byte, error)
}

// Leaser is an optional capability of a Codec whose work runs outside the
// caller's memory, such as a plugin behind the shared-memory data plane.
// Instead of handing Encode or Decode its own buffers, which the codec
// must then copy in and its output copy back, the caller leases a Buffer,
// builds the input directly in it, and reads the output where the codec
// wrote it. Codecs that run in the caller's process have nothing to save
// and do not implement it.
//
// Lease never fails: when the fast path is unavailable (no free slot, a
// block larger than a slot, no shared memory on this platform, the
// plugin on its gRPC fallback) the Buffer is private memory and its
// Encode and Decode take the copying path, with the same results.
type Leaser interface {
	Codec
	// Lease returns a Buffer whose Input has room for at least size
	// bytes when the fast path can take that much.
	Lease(size int) Buffer
}

// Buffer is memory leased from a Leaser codec for one block at a time.
// It is not safe for concurrent use. Release must be called exactly once;
// afterwards every method fails (Input returns nil, Encode and Decode an
// error wrapping sdk.ErrInvalidArgument) and no slice it handed out may be
// touched again.
type Buffer interface {
	// Input returns the buffer to build the block in: length 0, capacity
	// at least the size passed to Lease when the fast path took it.
	// Append to it and pass the result to Encode or Decode.
	Input() []byte
	// Encode encodes src at level, like Codec.Encode. src is normally
	// what was appended to Input(): then the codec reads it in place. Any
	// other slice works too (it is copied in, as with Codec.Encode). The
	// result is valid until the next Encode, Decode or Release; it may be
	// in memory the codec's process shares, so the caller must not write
	// to it and must treat it as untrusted codec output.
	Encode(src []byte, level int) ([]byte, error)
	// Decode decodes src, at most maxSize bytes, like Codec.Decode, with
	// the same rules for src and the result as Encode.
	Decode(src []byte, maxSize int) ([]byte, error)
	// Release gives the buffer back to the codec.
	Release()
}

// MaxBatch is the most blocks one Batch holds.
const MaxBatch = 64

// Batcher is an optional capability of a Leaser codec: a Batch carries
// several blocks to the codec's process in one round trip, so the fixed
// cost of crossing into it (waking the other process and being woken
// back, several microseconds each) is paid once per batch instead of once
// per block. It pays for small blocks (a few KiB to a few hundred KiB),
// where that fixed cost is a large part of the work. The blocks of one
// Batch run one after the other in the codec's process; callers that want
// several of its cores busy run several Batches from several goroutines.
//
// LeaseBatch never fails, like Lease: without the fast path the Batch is
// private memory and Run encodes or decodes its blocks one by one through
// Codec.Encode and Codec.Decode, with the same results.
type Batcher interface {
	Leaser
	// LeaseBatch returns an empty Batch whose Input has room for blocks
	// totalling at least size bytes when the fast path can take that much.
	LeaseBatch(size int) Batch
}

// Batch is memory leased from a Batcher codec for up to MaxBatch blocks,
// filled, run in one round trip, read, and then reset for the next
// blocks or released. It is not safe for concurrent use. Release must be
// called exactly once; afterwards every method fails and no slice it
// handed out may be touched again.
//
// A typical round: for each block, append it to Input() and queue it with
// AddEncode or AddDecode; Run; read Result(i) for each; Reset.
type Batch interface {
	// Input returns where to build the next block: length 0, capacity the
	// room left (nil after Run until Reset, or after Release).
	Input() []byte
	// AddEncode queues the encoding of src at level, AddDecode the
	// decoding of src into at most maxSize bytes; block indexes count up
	// from 0 in the order they are added. src is normally what was
	// appended to Input(): the codec then reads it in place. Any other
	// slice works too (it is copied in, or, if it does not fit, left
	// where it is and read at Run, so it must not change until then). A
	// block that does not fit the fast path runs alone through
	// Codec.Encode or Codec.Decode. They fail (sdk.ErrInvalidArgument)
	// only when the Batch already holds MaxBatch blocks, has run and was
	// not Reset, or was released.
	AddEncode(src []byte, level int) error
	AddDecode(src []byte, maxSize int) error
	// Len reports how many blocks are queued.
	Len() int
	// Run processes every queued block. Its error is for the round trip
	// as a whole (the codec's process died, the call timed out), and then
	// every block's Result carries it too; a block that fails on its own
	// (corrupt input, output over maxSize) fails only in its Result.
	Run() error
	// Result returns block i's output or error after Run. The output
	// follows Buffer.Encode's rules: valid until Reset or Release,
	// read-only, untrusted codec output.
	Result(i int) ([]byte, error)
	// Reset empties the Batch for new blocks, keeping its memory.
	Reset()
	// Release gives the Batch back to the codec.
	Release()
}

// Tier is the distance class of a link, which selects a default level.
type Tier int

const (
	// TierLocal: datacenter, throughput first.
	TierLocal Tier = iota
	// TierRegional: a metro or regional link, balanced.
	TierRegional
	// TierGlobal: intercontinental or thin links, bytes first.
	TierGlobal
)

func (t Tier) String() string {
	switch t {
	case TierLocal:
		return "local"
	case TierRegional:
		return "regional"
	case TierGlobal:
		return "global"
	}
	return fmt.Sprintf("tier(%d)", int(t))
}

// ParseTier reads a tier name as printed by Tier.String.
func ParseTier(s string) (Tier, error) {
	switch s {
	case "local":
		return TierLocal, nil
	case "regional":
		return TierRegional, nil
	case "global":
		return TierGlobal, nil
	}
	return 0, fmt.Errorf("unknown tier %q (want local, regional or global)", s)
}

// LevelRange is the span of levels a codec accepts.
type LevelRange struct {
	Min, Max, Default int
}

// Contains reports whether level is accepted.
func (r LevelRange) Contains(level int) bool { return level >= r.Min && level <= r.Max }

// Bound says how large an encoding can get: for n input bytes the output is
// at most n*Num/Den + Add. The host sizes shared-memory slots with it.
type Bound struct {
	Num, Den, Add uint64
}

// Max returns the largest encoding of n bytes.
func (b Bound) Max(n int) int {
	if b.Den == 0 {
		return n + int(b.Add)
	}
	return int(uint64(n)*b.Num/b.Den + b.Add)
}

// Capabilities describes a codec.
type Capabilities struct {
	// Algorithm names the format, e.g. "zstd"; two codecs with the same
	// algorithm name must decode each other's output.
	Algorithm string
	Levels    LevelRange
	// Tiers maps each Tier to the level used for it.
	Tiers [3]int
	// Deterministic: encoding the same input at the same level always
	// yields the same bytes. The conformance kit checks it when set.
	Deterministic bool
	Bound         Bound
	// Features lists optional behaviours (free-form, e.g. "hc", "asm").
	Features []string
}

// LevelFor returns the level for a tier.
func (c Capabilities) LevelFor(t Tier) int {
	if t < TierLocal || t > TierGlobal {
		return c.Levels.Default
	}
	return c.Tiers[t]
}
