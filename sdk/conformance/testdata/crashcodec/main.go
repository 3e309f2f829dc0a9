// Command crashcodec is a deliberately broken codec plugin for the kit's own
// tests: it stores blocks behind a length prefix, and the first damaged
// block it is asked to decode kills the process with a panic no handler can
// recover (it is raised on a fresh goroutine). The kit must report the
// crash with the plugin's last words instead of hanging or passing.
package main

import (
	"encoding/binary"
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

type crashCodec struct{}

func (crashCodec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm:     "crash-store",
		Levels:        codec.LevelRange{Min: 0, Max: 0, Default: 0},
		Deterministic: true,
		Bound:         codec.Bound{Num: 1, Den: 1, Add: binary.MaxVarintLen64},
	}
}

func (crashCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level != 0 {
		return dst, fmt.Errorf("level %d: %w", level, sdk.ErrInvalidArgument)
	}
	dst = binary.AppendUvarint(dst, uint64(len(src)))
	return append(dst, src...), nil
}

func (crashCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, sdk.ErrInvalidArgument
	}
	n, k := binary.Uvarint(src)
	if k > 0 && n > uint64(maxSize) {
		return dst, sdk.ErrTooLarge
	}
	if k <= 0 || uint64(len(src)-k) != n {
		// The caller never returns: a deferred close here would run
		// while the panic unwinds and could let a reply escape before
		// the runtime kills the process.
		go panic("crashcodec: damaged block")
		select {}
	}
	return append(dst, src[k:]...), nil
}

func main() {
	plugin.Serve(plugin.ServeConfig{Name: "crashcodec", Version: "0.0.1", Summary: "crashes on damaged input (kit test fixture)", Codec: crashCodec{}})
}
