package main

import (
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/spf13/cobra"
)

func newLabCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "lab [profiles | up --profile P | selftest [--profile P]]",
		Short: "The user-space WAN lab: hosts in network namespaces joined by a shaped link (root)",
		Long: "lab emulates WAN links on one machine (delay, jitter, rate with a drop-tail queue, loss,\n" +
			"cuts) for tests, benchmarks and the demo. See docs/wanlab.md.",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := wanlab.Main(cmd.Context(), args, cmd.OutOrStdout(), cmd.ErrOrStderr()); code != 0 {
				return &exitError{code: code, err: errLabFailed}
			}
			return nil
		},
	}
}
