// Command testcodec is a codec plugin for the plugin host's tests: a
// pass-through whose input can ask it to misbehave. It is built by the tests
// and never shipped.
package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// protocols is set with -ldflags "-X main.protocols=2,3" to build a plugin
// that speaks other protocol versions.
var protocols = "1"

type misbehaving struct{}

func (misbehaving) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm: "identity-test",
		Levels:    codec.LevelRange{Min: 0, Max: 0, Default: 0},
		Bound:     codec.Bound{Num: 1, Den: 1},
	}
}

func (misbehaving) Encode(dst, src []byte, level int) ([]byte, error) {
	switch {
	case bytes.HasPrefix(src, []byte("panic")):
		fmt.Fprintln(os.Stderr, "about to panic on purpose")
		panic("testcodec: asked to panic")
	case bytes.HasPrefix(src, []byte("exit")):
		os.Exit(7)
	case bytes.HasPrefix(src, []byte("hang")):
		// Tests wait for this line to know the call is in flight.
		fmt.Fprintln(os.Stderr, "testcodec: hanging in Encode")
		select {}
	case bytes.HasPrefix(src, []byte("corrupt")):
		return dst, fmt.Errorf("testcodec: input says it is corrupt: %w", sdk.ErrCorruptInput)
	}
	if level != 0 {
		return dst, fmt.Errorf("testcodec: level %d: %w", level, sdk.ErrInvalidArgument)
	}
	return append(dst, src...), nil
}

func (misbehaving) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if len(src) > maxSize {
		return dst, fmt.Errorf("testcodec: %d bytes: %w", len(src), sdk.ErrTooLarge)
	}
	return append(dst, src...), nil
}

func main() {
	var versions []int
	for _, f := range strings.Split(protocols, ",") {
		v, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad protocols:", protocols)
			os.Exit(2)
		}
		versions = append(versions, v)
	}
	plugin.Serve(plugin.ServeConfig{
		Name:             "testcodec",
		Version:          "0.0.1",
		Summary:          "misbehaving pass-through codec for tests",
		Codec:            misbehaving{},
		ProtocolVersions: versions,
	})
}
