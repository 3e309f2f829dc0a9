package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/benchreport/sections"
	"github.com/spf13/cobra"
)

func newBenchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure DWCP on this machine",
	}
	cmd.AddCommand(newBenchReportCommand(), newBenchCheckCommand())
	return cmd
}

func newBenchReportCommand() *cobra.Command {
	var quick bool
	var out, pluginDir string
	var only []string
	cmd := &cobra.Command{
		Use:   "report",
		Short: "Run the benchmark suite and write the performance validation report (Markdown + SVG charts)",
		Long: "report measures everything that exists on this machine — the data path, the codecs, the\n" +
			"modes in the WAN lab, live migrations of the test guest through DWCP and with QEMU's own\n" +
			"migration, the zstd/lz4 command-line tools — and writes OUT/report.md with its charts.\n" +
			"Baselines are measured in the same run; rows that cannot be measured here say why.\n" +
			"The WAN lab and live migrations need root, /dev/net/tun and QEMU.\n" +
			"Sections: " + strings.Join(sectionKeys(), ", ") + ".",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			specs := sections.All()
			for _, k := range only {
				if !validSection(k) {
					return fmt.Errorf("--only %s: no such section (have %s)", k, strings.Join(sectionKeys(), ", "))
				}
			}
			if len(only) > 0 {
				specs = slices.DeleteFunc(specs, func(s benchreport.SectionSpec) bool { return !slices.Contains(only, s.Key) })
			}
			log := cmd.ErrOrStderr()
			_, runErr := benchreport.Run(cmd.Context(), benchreport.Options{
				Quick: quick, Out: out, PluginDir: pluginDir, Dwcp: self, Progress: log, Only: only,
			}, specs)
			if _, err := benchreport.Check(out, specs); err != nil {
				return fmt.Errorf("the written report is incomplete: %w", err)
			}
			if runErr != nil {
				return runErr
			}
			fmt.Fprintf(cmd.OutOrStdout(), "report written to %s\n", filepath.Join(out, benchreport.ReportFile))
			return nil
		},
	}
	cmd.Flags().BoolVar(&quick, "quick", false, "small inputs and single runs: a few minutes on 2 cores")
	cmd.Flags().StringVar(&out, "out", "report", "output folder for report.md and the charts")
	cmd.Flags().StringVar(&pluginDir, "plugin-dir", defaultPluginDir(), "pinned plugin directory (codecs and the qemu plugin)")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these sections (comma-separated keys)")
	return cmd
}

func newBenchCheckCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check DIR",
		Short: "Verify that a written report is complete (every table and chart present, no unexplained empty cell)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := benchreport.Check(args[0], sections.All())
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d sections, %d tables, %d charts: complete\n", args[0], len(p.Sections), len(p.Tables), len(p.Images))
			return nil
		},
	}
}

func sectionKeys() []string {
	var keys []string
	for _, s := range sections.All() {
		keys = append(keys, s.Key)
	}
	return keys
}

func validSection(k string) bool {
	for _, s := range sections.All() {
		if s.Key == k {
			return true
		}
	}
	return false
}
