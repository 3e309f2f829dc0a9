// Command lz4 is the DWCP LZ4 codec plugin: lz4codec served through the
// SDK's plugin protocol. Run `lz4 describe` to see what it is.
package main

import (
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func main() {
	plugin.Serve(plugin.ServeConfig{
		Name:    "lz4",
		Version: "0.1.0",
		Summary: "LZ4 block codec (pierrec/lz4): level 0 = fast, 1-9 = high compression at growing depth",
		Codec:   lz4codec.New(),
	})
}
