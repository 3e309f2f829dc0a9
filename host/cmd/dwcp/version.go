package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/spf13/cobra"
)

type versionInfo struct {
	Version         string `json:"version"`
	Commit          string `json:"commit,omitempty"`
	Go              string `json:"go"`
	SDK             string `json:"sdk"`
	PluginProtocols []int  `json:"plugin_protocols"`
	Platform        string `json:"platform"`
}

func currentVersion() versionInfo {
	v := versionInfo{
		Version:         version,
		Go:              runtime.Version(),
		SDK:             sdk.Version,
		PluginProtocols: plugin.SupportedProtocols,
		Platform:        runtime.GOOS + "/" + runtime.GOARCH,
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				v.Commit = s.Value
			}
		}
	}
	return v
}

func newVersionCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the dwcp version, SDK version and plugin protocol versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dwcp %s", v.Version)
			if v.Commit != "" {
				fmt.Fprintf(cmd.OutOrStdout(), " (%.12s)", v.Commit)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\nsdk %s, plugin protocols %v, %s, %s\n", v.SDK, v.PluginProtocols, v.Go, v.Platform)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
