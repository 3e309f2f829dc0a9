package simdaccel

import (
	"fmt"
	"slices"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/klauspost/compress/s2"
)

// compress appends the s2 block encoding of in at level 1-3.
func compress(dst []byte, level int64, in []byte) ([]byte, error) {
	var enc func(dst, src []byte) []byte
	switch level {
	case LevelFast:
		enc = s2.Encode
	case LevelBetter:
		enc = s2.EncodeBetter
	case LevelBest:
		enc = s2.EncodeBest
	default:
		return dst, fmt.Errorf("simdaccel %s: level %d (want %d-%d): %w", accel.OpCompress, level, LevelFast, LevelBest, sdk.ErrInvalidArgument)
	}
	bound := s2.MaxEncodedLen(len(in))
	if bound < 0 {
		return dst, fmt.Errorf("simdaccel %s: block of %d bytes exceeds the s2 block limit: %w", accel.OpCompress, len(in), sdk.ErrTooLarge)
	}
	start := len(dst)
	dst = slices.Grow(dst, bound)
	// s2 writes into the buffer it is given when its capacity covers the
	// bound, so the encoding lands in place after dst's contents.
	out := enc(dst[start:start+bound], in)
	return dst[:start+len(out)], nil
}

// decompress appends the block decoded from in, refusing before any
// allocation a block whose header claims more than maxSize bytes.
func decompress(dst []byte, maxSize int64, in []byte) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("simdaccel %s: maximum output %d: %w", accel.OpDecompress, maxSize, sdk.ErrInvalidArgument)
	}
	n, err := s2.DecodedLen(in)
	if err != nil {
		return dst, fmt.Errorf("simdaccel %s: block header: %v: %w", accel.OpDecompress, err, sdk.ErrCorruptInput)
	}
	if int64(n) > maxSize {
		return dst, fmt.Errorf("simdaccel %s: block decodes to %d bytes, limit %d: %w", accel.OpDecompress, n, maxSize, sdk.ErrTooLarge)
	}
	start := len(dst)
	dst = slices.Grow(dst, n)
	if _, err := s2.Decode(dst[start:start+n], in); err != nil {
		return dst[:start], fmt.Errorf("simdaccel %s: %v: %w", accel.OpDecompress, err, sdk.ErrCorruptInput)
	}
	return dst[:start+n], nil
}
