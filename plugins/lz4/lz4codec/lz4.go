// Package lz4codec is DWCP's LZ4 codec (pierrec/lz4/v4): LZ4 blocks, the
// fastest to decode, at level 0 (the fast compressor) and levels 1..9 (the
// high-compression compressor at growing search depth).
//
// LZ4's block format does not record the decoded size, so each encoding is
// framed (see Encode). The package owns that framing, the level and tier
// mapping and the compressor pools. It must not know about plugins or
// transports: the plugin binary in the parent folder serves it, and the
// host may link it directly.
package lz4codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/pierrec/lz4/v4"
)

// Levels.
const (
	LevelFast = 0 // lz4.Compressor
	LevelHC1  = 1 // lz4.CompressorHC at depth lz4.Level1
	LevelHC9  = 9 // lz4.CompressorHC at depth lz4.Level9
)

// Algorithm is the format name in Capabilities. It names this package's
// framing around LZ4 blocks, not the LZ4 frame format.
const Algorithm = "lz4-block"

// Kinds of block, the first byte of every encoding.
const (
	kindStored = 0x00 // payload: the n bytes themselves
	kindLZ4    = 0x01 // payload: one LZ4 block that decodes to exactly n bytes
)

// headerMax is the largest header: a kind byte and a 64-bit uvarint.
const headerMax = 1 + binary.MaxVarintLen64

var depths = [...]lz4.CompressionLevel{
	lz4.Level1, lz4.Level2, lz4.Level3, lz4.Level4, lz4.Level5,
	lz4.Level6, lz4.Level7, lz4.Level8, lz4.Level9,
}

// Codec implements codec.Codec and is safe for concurrent use. Compressors
// hold 64 KiB to several MiB of tables and are not safe for concurrent
// use, so they are pooled; a warm pool makes Encode allocation-free.
type Codec struct {
	fast freeList[lz4.Compressor]
	hc   freeList[lz4.CompressorHC] // the depth is set per call
}

// New returns the codec. Each pool keeps up to twice GOMAXPROCS
// compressors.
func New() *Codec {
	n := 2 * max(runtime.GOMAXPROCS(0), 1)
	return &Codec{fast: newFreeList[lz4.Compressor](n), hc: newFreeList[lz4.CompressorHC](n)}
}

// freeList is a bounded pool. Unlike sync.Pool it is not emptied at every
// GC, which would rebuild the large HC tables (an allocation of
// megabytes) after each collection in a busy host.
type freeList[T any] struct{ ch chan *T }

func newFreeList[T any](n int) freeList[T] { return freeList[T]{ch: make(chan *T, n)} }

func (f freeList[T]) get() *T {
	select {
	case x := <-f.ch:
		return x
	default:
		return new(T)
	}
}

func (f freeList[T]) put(x *T) {
	select {
	case f.ch <- x:
	default: // more callers than slots: let the GC have it
	}
}

// Capabilities implements codec.Codec.
func (*Codec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm: Algorithm,
		Levels:    codec.LevelRange{Min: LevelFast, Max: LevelHC9, Default: LevelFast},
		// By encode speed on memory-like data (docs/codecs.md): only the
		// fast compressor (several hundred MB/s a core) keeps a local or
		// regional link full. HC runs an order of magnitude slower, fast
		// enough only for a global link; depth 1 gets all but ~0.2 % of
		// depth 9's ratio at up to 10 times its speed, so deeper levels are
		// left to manual mode.
		Tiers:         [3]int{codec.TierLocal: LevelFast, codec.TierRegional: LevelFast, codec.TierGlobal: LevelHC1},
		Deterministic: true,
		// Blocks that do not shrink are stored: n plus the header.
		Bound:    codec.Bound{Num: 1, Den: 1, Add: headerMax},
		Features: []string{"hc"},
	}
}

// Encode implements codec.Codec. It appends
//
//	kind (1 byte) | uvarint decoded length n | payload
//
// where kind 0 stores the n bytes as they are and kind 1 holds one LZ4
// block. A block is stored whenever LZ4 does not make it smaller, so an
// encoding never exceeds n + 11 bytes.
func (c *Codec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level < LevelFast || level > LevelHC9 {
		return dst, fmt.Errorf("lz4 encode: level %d outside %d..%d: %w", level, LevelFast, LevelHC9, sdk.ErrInvalidArgument)
	}
	base := len(dst)
	dst = slices.Grow(dst, headerMax+len(src))
	dst = append(dst, kindLZ4)
	dst = binary.AppendUvarint(dst, uint64(len(src)))
	hdr := len(dst)
	// Room for one byte less than the input: a block that does not shrink
	// fails to fit and is stored instead.
	room := dst[hdr : hdr+max(len(src)-1, 0)]
	n, err := c.compress(room, src, level)
	if err != nil && !errors.Is(err, lz4.ErrInvalidSourceShortBuffer) {
		return dst[:base], fmt.Errorf("lz4 encode: %w", err)
	}
	if err != nil || n == 0 {
		dst[base] = kindStored
		return append(dst, src...), nil
	}
	return dst[:hdr+n], nil
}

func (c *Codec) compress(room, src []byte, level int) (int, error) {
	if len(room) == 0 {
		return 0, nil
	}
	if level == LevelFast {
		z := c.fast.get()
		defer c.fast.put(z)
		return z.CompressBlock(src, room)
	}
	z := c.hc.get()
	defer c.hc.put(z)
	z.Level = depths[level-1]
	return z.CompressBlock(src, room)
}

// Decode implements codec.Codec. The decoded length is read from the
// header and checked against maxSize before anything is allocated.
func (*Codec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("lz4 decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	if len(src) < 2 {
		return dst, fmt.Errorf("lz4 decode: %d-byte input is shorter than a header: %w", len(src), sdk.ErrCorruptInput)
	}
	kind := src[0]
	size, k := binary.Uvarint(src[1:])
	if k <= 0 {
		return dst, fmt.Errorf("lz4 decode: bad length in header: %w", sdk.ErrCorruptInput)
	}
	if size > uint64(maxSize) {
		return dst, fmt.Errorf("lz4 decode: block declares %d bytes, limit %d: %w", size, maxSize, sdk.ErrTooLarge)
	}
	n := int(size)
	payload := src[1+k:]
	switch kind {
	case kindStored:
		if len(payload) != n {
			return dst, fmt.Errorf("lz4 decode: stored block of %d bytes declares %d: %w", len(payload), n, sdk.ErrCorruptInput)
		}
		return append(dst, payload...), nil
	case kindLZ4:
		// An LZ4 sequence expands at most ~255 times, so a payload far too
		// short for n is damage; refusing it here spares the allocation.
		if len(payload) == 0 || uint64(n) > 255*uint64(len(payload))+16 {
			return dst, fmt.Errorf("lz4 decode: %d-byte payload cannot hold %d bytes: %w", len(payload), n, sdk.ErrCorruptInput)
		}
		buf := slices.Grow(dst, n)
		got, err := lz4.UncompressBlock(payload, buf[len(dst):len(dst)+n])
		if err != nil {
			return dst, fmt.Errorf("lz4 decode: %v: %w", err, sdk.ErrCorruptInput)
		}
		if got != n {
			return dst, fmt.Errorf("lz4 decode: %d bytes decoded, header says %d: %w", got, n, sdk.ErrCorruptInput)
		}
		return buf[:len(dst)+n], nil
	}
	return dst, fmt.Errorf("lz4 decode: unknown block kind %#02x: %w", kind, sdk.ErrCorruptInput)
}
