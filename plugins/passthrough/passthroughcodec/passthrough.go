// Package passthroughcodec is DWCP's identity codec: the encoding of a block
// is the block. The host uses it for links fast enough that any codec would
// be the bottleneck, and as the baseline the other codecs are measured
// against.
//
// It owns nothing but the copy and the size limit. It must not know about
// plugins or transports.
package passthroughcodec

import (
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
)

// Algorithm is the format name in Capabilities.
const Algorithm = "passthrough"

// Codec implements codec.Codec. It has no state.
type Codec struct{}

// New returns the codec.
func New() *Codec { return &Codec{} }

// Capabilities implements codec.Codec: one level, 0, for every tier.
func (*Codec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm:     Algorithm,
		Levels:        codec.LevelRange{Min: 0, Max: 0, Default: 0},
		Tiers:         [3]int{0, 0, 0},
		Deterministic: true,
		Bound:         codec.Bound{Num: 1, Den: 1, Add: 0},
	}
}

// Encode implements codec.Codec: it appends src to dst.
func (*Codec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level != 0 {
		return dst, fmt.Errorf("passthrough encode: level %d, only 0 exists: %w", level, sdk.ErrInvalidArgument)
	}
	return append(dst, src...), nil
}

// Decode implements codec.Codec: it appends src to dst if it fits maxSize.
// Every input is a valid encoding, so it never reports damage: integrity is
// the frame layer's job.
func (*Codec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("passthrough decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	if len(src) > maxSize {
		return dst, fmt.Errorf("passthrough decode: %d bytes, limit %d: %w", len(src), maxSize, sdk.ErrTooLarge)
	}
	return append(dst, src...), nil
}
