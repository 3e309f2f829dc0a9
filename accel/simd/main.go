// Command simd is the DWCP CPU accelerator plugin: zero-page scan, XXH3-128
// page hashing, XOR delta and s2 compression on the vector units this CPU
// has (see package simdaccel for the paths and how they are chosen).
//
// Environment:
//
//	DWCP_SIMD_GENERIC=1   use the pure-Go loops for zero scan and XOR, as
//	                      on a CPU without vector units (for testing the
//	                      fallback and for comparisons)
//	DWCP_SIMD_COMPRESS=0  do not offer OpCompress/OpDecompress
package main

import (
	"fmt"
	"os"

	"github.com/dwcp/dwcp/accel/simd/simdaccel"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// version is this plugin's own release; bump it with any change to its
// behaviour.
const version = "0.1.0"

func main() {
	a, err := simdaccel.New(
		simdaccel.WithGeneric(os.Getenv("DWCP_SIMD_GENERIC") == "1"),
		simdaccel.WithCompression(os.Getenv("DWCP_SIMD_COMPRESS") != "0"),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "simd accelerator:", err)
		os.Exit(2)
	}
	plugin.Serve(plugin.ServeConfig{
		Name:        "simd",
		Version:     version,
		Summary:     "CPU fast paths: " + a.Paths().String(),
		Accelerator: a,
	})
}
