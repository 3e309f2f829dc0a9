// Command testcodec is a protocol fixture for sdk/plugin's tests: a codec
// plugin whose "compression" is a byte-wise transform the tests can check
// exactly, with levels that provoke what a Buffer must survive. It is
// built by the tests and never shipped.
//
// Level 1..6: each byte XOR level, behind a one-byte header holding the
// level (so Decode needs no level). Level 7: the same, but the output is
// padded to len(src) + len(src)/8 + 512 bytes, more than a shared-memory
// slot holds for a full-slot input, so the host must take the gRPC
// stream. Level 8: the process dies mid-call.
package main

import (
	"fmt"
	"os"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

type xorCodec struct{}

func (xorCodec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm:     "test-xor",
		Levels:        codec.LevelRange{Min: 1, Max: 8, Default: 1},
		Tiers:         [3]int{1, 2, 3},
		Deterministic: true,
		Bound:         codec.Bound{Num: 9, Den: 8, Add: 1024},
	}
}

func (xorCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	switch {
	case level < 1 || level > 8:
		return dst, fmt.Errorf("test-xor: level %d: %w", level, sdk.ErrInvalidArgument)
	case level == 8:
		os.Exit(3)
	}
	dst = append(dst, byte(level))
	for _, b := range src {
		dst = append(dst, b^byte(level))
	}
	if level == 7 {
		for range len(src)/8 + 511 {
			dst = append(dst, 0)
		}
	}
	return dst, nil
}

func (xorCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if len(src) == 0 || src[0] < 1 || src[0] > 7 {
		return dst, fmt.Errorf("test-xor: bad header: %w", sdk.ErrCorruptInput)
	}
	level := src[0]
	body := src[1:]
	if level == 7 {
		n := (len(body) - 511) * 8 / 9
		if n < 0 || n+n/8+511 != len(body) {
			return dst, fmt.Errorf("test-xor: bad padding: %w", sdk.ErrCorruptInput)
		}
		body = body[:n]
	}
	if len(body) > maxSize {
		return dst, fmt.Errorf("test-xor: %d bytes over %d: %w", len(body), maxSize, sdk.ErrTooLarge)
	}
	for _, b := range body {
		dst = append(dst, b^level)
	}
	return dst, nil
}

func main() {
	plugin.Serve(plugin.ServeConfig{Name: "testcodec", Version: "0.0.1", Summary: "XOR transform codec (sdk/plugin test fixture)", Codec: xorCodec{}})
}
