// Command zstd is the DWCP zstd codec plugin: zstdcodec served through the
// SDK's plugin protocol. Run `zstd describe` to see what it is.
package main

import (
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func main() {
	plugin.Serve(plugin.ServeConfig{
		Name:    "zstd",
		Version: "0.1.0",
		Summary: "zstd block codec (klauspost/compress): levels 1-4 = fastest, default, better, best",
		Codec:   zstdcodec.New(),
	})
}
