// Command flatecodec is an example third-party DWCP codec plugin: DEFLATE
// from Go's standard library, written against the DWCP SDK alone.
//
// Build it, check it, install it: see README.md.
package main

import "github.com/dwcp/dwcp/sdk/plugin"

func main() {
	// Serve answers `flatecodec describe` and otherwise serves the codec
	// to the DWCP host. Nothing may be printed to stdout before this call:
	// stdout carries the plugin handshake.
	plugin.Serve(plugin.ServeConfig{
		Name:    "flatecodec",
		Version: "0.1.0",
		Summary: "example third-party codec: raw DEFLATE (compress/flate), levels 1-9",
		Codec:   NewCodec(),
	})
}
