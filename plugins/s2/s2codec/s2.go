// Package s2codec is DWCP's S2 codec (klauspost/compress/s2): S2 blocks
// (a Snappy extension), very fast to encode and decode, at three levels.
//
// It owns the level and tier mapping and the bounded decode. It must not
// know about plugins or transports: the plugin binary in the parent folder
// serves it, and the host may link it directly.
package s2codec

import (
	"fmt"
	"slices"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/klauspost/compress/s2"
)

// Levels: s2's three block encoders.
const (
	LevelFast   = 1 // s2.Encode
	LevelBetter = 2 // s2.EncodeBetter
	LevelBest   = 3 // s2.EncodeBest
)

// Algorithm is the format name in Capabilities: the S2 block format, whose
// decoder also reads Snappy blocks.
const Algorithm = "s2"

// maxInput is the largest block the S2 block format can describe.
const maxInput = 0xffffffff

// Codec implements codec.Codec. It has no state: s2's block functions keep
// their tables on the stack or in their own pools, so the zero value is
// ready and safe for concurrent use.
type Codec struct{}

// New returns the codec.
func New() *Codec { return &Codec{} }

// Capabilities implements codec.Codec.
func (*Codec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm: Algorithm,
		Levels:    codec.LevelRange{Min: LevelFast, Max: LevelBest, Default: LevelFast},
		// By encode speed on memory-like data (docs/codecs.md): Encode
		// (~800 MB/s a core) for local links; EncodeBetter (~220 MB/s, +6 %
		// ratio) for regional and global ones. EncodeBest runs at ~10 MB/s
		// for another 3-4 %: zstd beats it on both counts, so it is left to
		// manual mode.
		Tiers:         [3]int{codec.TierLocal: LevelFast, codec.TierRegional: LevelBetter, codec.TierGlobal: LevelBetter},
		Deterministic: true,
		// s2.MaxEncodedLen: n, a uvarint length (≤ 5 bytes) and a literal
		// header (≤ 5 bytes).
		Bound: codec.Bound{Num: 1, Den: 1, Add: 10},
	}
}

// Encode implements codec.Codec: it appends one S2 block to dst.
func (*Codec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level < LevelFast || level > LevelBest {
		return dst, fmt.Errorf("s2 encode: level %d outside %d..%d: %w", level, LevelFast, LevelBest, sdk.ErrInvalidArgument)
	}
	// s2 panics above its limit; refuse first.
	if len(src) > maxInput {
		return dst, fmt.Errorf("s2 encode: %d-byte block over the format's %d: %w", len(src), maxInput, sdk.ErrInvalidArgument)
	}
	n := s2.MaxEncodedLen(len(src))
	dst = slices.Grow(dst, n)
	// s2 writes at the start of the slice it is given and returns a
	// sub-slice of it when it fits, which it always does at MaxEncodedLen.
	room := dst[len(dst) : len(dst)+n]
	var out []byte
	switch level {
	case LevelFast:
		out = s2.Encode(room, src)
	case LevelBetter:
		out = s2.EncodeBetter(room, src)
	default:
		out = s2.EncodeBest(room, src)
	}
	return dst[:len(dst)+len(out)], nil
}

// Decode implements codec.Codec. The decoded length is read from the
// block's header and checked against maxSize before anything is
// allocated.
func (*Codec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("s2 decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	n, err := s2.DecodedLen(src)
	if err != nil {
		return dst, fmt.Errorf("s2 decode: block header: %v: %w", err, sdk.ErrCorruptInput)
	}
	if n > maxSize {
		return dst, fmt.Errorf("s2 decode: block declares %d bytes, limit %d: %w", n, maxSize, sdk.ErrTooLarge)
	}
	buf := slices.Grow(dst, n)
	out, err := s2.Decode(buf[len(dst):len(dst)+n], src)
	if err != nil {
		return dst, fmt.Errorf("s2 decode: %v: %w", err, sdk.ErrCorruptInput)
	}
	if len(out) != n {
		return dst, fmt.Errorf("s2 decode: %d bytes decoded, header says %d: %w", len(out), n, sdk.ErrCorruptInput)
	}
	return buf[:len(dst)+n], nil
}
