// Command qemu is DWCP's QEMU hypervisor plugin: it serves
// qemudriver.Driver over the plugin protocol. Run by the DWCP host, never
// by hand (except `qemu describe`, which prints what it is).
//
// Environment: DWCP_QEMU_QMP_DIR (QMP sockets ListVMs reports),
// DWCP_QEMU_RUN_DIR (run directories of destination VMs it starts), both
// /run/dwcp/qemu by default, and DWCP_QEMU (the emulator binary).
package main

import (
	"fmt"
	"os"

	"github.com/dwcp/dwcp/hypervisors/qemu/qemudriver"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/hashicorp/go-hclog"
)

// version is the plugin's own version, set at build time with
// -ldflags "-X main.version=...".
var version = "0.1.0"

func main() {
	logger := hclog.New(&hclog.LoggerOptions{
		Name: "qemu", Level: hclog.Info, Output: os.Stderr, JSONFormat: true,
	})
	cfg := qemudriver.ConfigFromEnv()
	cfg.Logger = logger
	d, err := qemudriver.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	plugin.Serve(plugin.ServeConfig{
		Name:       "qemu",
		Version:    version,
		Summary:    "QEMU live migration over QMP (go-qemu); starts or attaches destination VMs",
		Hypervisor: d,
		Logger:     logger,
	})
	if err := d.Close(); err != nil {
		logger.Warn("closing the driver", "error", err)
	}
}
