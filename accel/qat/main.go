// Command qat is the DWCP Intel QuickAssist accelerator plugin. This build
// has no QAT library and so cannot offload: by default it offers no
// operations and reports itself unhealthy with what its device probe found.
// Started with DWCP_QAT_EMULATE=1 it becomes "qat-emulated": deflate in
// software, flagged Emulated everywhere. See docs/accelerators.md.
package main

import (
	"os"

	"github.com/dwcp/dwcp/accel/qat/qataccel"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// version is this plugin's own release; bump it with any change to its
// behaviour.
const version = "0.1.0"

func main() {
	a := qataccel.New(qataccel.Config{Emulate: os.Getenv(qataccel.EnvEmulate) == "1"})
	plugin.Serve(plugin.ServeConfig{
		Name:        a.Name(),
		Version:     version,
		Summary:     a.Summary(),
		Accelerator: a,
	})
}
