// Command passthrough is the DWCP identity codec plugin: passthroughcodec
// served through the SDK's plugin protocol. Run `passthrough describe` to
// see what it is.
package main

import (
	"github.com/dwcp/dwcp/plugins/passthrough/passthroughcodec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func main() {
	plugin.Serve(plugin.ServeConfig{
		Name:    "passthrough",
		Version: "0.1.0",
		Summary: "identity codec: blocks travel as they are (level 0 only)",
		Codec:   passthroughcodec.New(),
	})
}
