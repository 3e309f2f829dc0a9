// Command refaccelplugin serves refaccel as a plugin binary for the
// conformance kit's own tests. REFACCEL_FAULT selects a fault by number;
// REFACCEL_NAME and REFACCEL_SUMMARY override the labels.
package main

import (
	"os"
	"strconv"

	"github.com/dwcp/dwcp/sdk/conformance/internal/refaccel"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func main() {
	f, _ := strconv.Atoi(os.Getenv("REFACCEL_FAULT"))
	name, summary := "refaccel", "the conformance kit's reference accelerator"
	if v := os.Getenv("REFACCEL_NAME"); v != "" {
		name = v
	}
	if v := os.Getenv("REFACCEL_SUMMARY"); v != "" {
		summary = v
	}
	plugin.Serve(plugin.ServeConfig{
		Name:        name,
		Version:     "0.0.1",
		Summary:     summary,
		Accelerator: &refaccel.Accel{Fault: refaccel.Fault(f)},
	})
}
