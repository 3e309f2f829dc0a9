// Command s2 is the DWCP S2 codec plugin: s2codec served through the SDK's
// plugin protocol. Run `s2 describe` to see what it is.
package main

import (
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func main() {
	plugin.Serve(plugin.ServeConfig{
		Name:    "s2",
		Version: "0.1.0",
		Summary: "S2 block codec (klauspost/compress): levels 1-3 = Encode, EncodeBetter, EncodeBest",
		Codec:   s2codec.New(),
	})
}
