package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dwcp/dwcp/host/catalog"
	"github.com/dwcp/dwcp/host/pluginhost"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/plugin"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// defaultPluginDir is $DWCP_PLUGIN_DIR, else "plugins" beside the dwcp
// binary (where `make build` puts them).
func defaultPluginDir() string {
	if d := os.Getenv("DWCP_PLUGIN_DIR"); d != "" {
		return d
	}
	exe, err := os.Executable()
	if err != nil {
		return "plugins"
	}
	return filepath.Join(filepath.Dir(exe), "plugins")
}

func newPluginsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plugins",
		Short: "List, pin and check plugins",
	}
	cmd.AddCommand(newPluginsListCommand(), newPluginsPinCommand(), newPluginsCheckCommand())
	return cmd
}

// pluginRow is one line of `dwcp plugins list`.
type pluginRow struct {
	Name         string   `json:"name"`
	Kind         string   `json:"kind,omitempty"`
	Version      string   `json:"version,omitempty"`
	Protocol     int      `json:"protocol,omitempty"`
	Checksum     string   `json:"checksum"`
	SHA256       string   `json:"sha256,omitempty"`
	Health       string   `json:"health"`
	HealthDetail string   `json:"health_detail,omitempty"`
	DataPlane    string   `json:"data_plane,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	Emulated     bool     `json:"emulated,omitempty"`
	Path         string   `json:"path"`
	Error        string   `json:"error,omitempty"`
}

func capabilitySummary(fp plugin.Fingerprint) ([]string, bool) {
	switch {
	case fp.Codec != nil:
		c := fp.Codec
		return []string{
			"algorithm=" + c.Algorithm,
			fmt.Sprintf("levels=%d..%d", c.Levels.Min, c.Levels.Max),
			fmt.Sprintf("tiers=%d/%d/%d", c.Tiers[0], c.Tiers[1], c.Tiers[2]),
		}, false
	case fp.Accelerator != nil:
		a := fp.Accelerator
		var out []string
		for _, op := range a.Ops {
			out = append(out, op.String())
		}
		if len(a.Features) > 0 {
			out = append(out, "features="+strings.Join(a.Features, "+"))
		}
		if a.Emulated {
			out = append(out, "EMULATED")
		}
		return out, a.Emulated
	case fp.Hypervisor != nil:
		h := fp.Hypervisor
		return []string{h.Hypervisor + " " + h.Version, fmt.Sprintf("migration-capabilities=%d", len(h.MigrationCapabilities))}, false
	}
	return nil, false
}

func listPlugins(ctx context.Context, dir string, stderr io.Writer) ([]pluginRow, error) {
	logger := hclog.New(&hclog.LoggerOptions{Name: "dwcp", Level: hclog.Warn, Output: stderr})
	h, err := pluginhost.Open(ctx, pluginhost.Options{Dir: dir, Logger: logger})
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var rows []pluginRow
	for _, p := range h.Plugins() {
		d := p.Description()
		row := pluginRow{
			Name: p.Name(), Kind: string(d.Kind), Version: d.Version, Protocol: p.Protocol(),
			Checksum: "verified", SHA256: p.SHA256(), Path: p.Path(),
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		fp, err := p.Fingerprint(fctx)
		cancel()
		if err != nil {
			row.Health, row.Error = "unhealthy", err.Error()
		} else {
			row.Health, row.HealthDetail, row.DataPlane = fp.Health.Status.String(), fp.Health.Detail, fp.DataPlane
			row.Capabilities, row.Emulated = capabilitySummary(fp)
		}
		rows = append(rows, row)
	}
	for _, s := range h.Skipped() {
		state := "refused"
		if !isRefusal(s.Reason) {
			state = "skipped"
		}
		rows = append(rows, pluginRow{Name: s.Name, Checksum: state, Health: "not running", Path: s.Path, Error: s.Reason.Error()})
	}
	return rows, nil
}

func isRefusal(err error) bool {
	for _, e := range []error{catalog.ErrTampered, catalog.ErrUnknown, catalog.ErrEscapes, catalog.ErrMissing} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func newPluginsListCommand() *cobra.Command {
	var dir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Verify, start and fingerprint every plugin in the plugin directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows, err := listPlugins(cmd.Context(), dir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tVERSION\tPROTO\tCHECKSUM\tHEALTH\tDATA PLANE\tCAPABILITIES")
			for _, r := range rows {
				proto := "-"
				if r.Protocol > 0 {
					proto = fmt.Sprint(r.Protocol)
				}
				health := r.Health
				if r.HealthDetail != "" {
					health += "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Name, dash(r.Kind), dash(r.Version), proto,
					r.Checksum, health, dash(r.DataPlane), strings.Join(r.Capabilities, " "))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, r := range rows {
				if r.HealthDetail != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "* %s: %s\n", r.Name, r.HealthDetail)
				}
			}
			for _, r := range rows {
				if r.Error != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "! %s: %s\n", r.Name, r.Error)
				}
			}
			return nil
		},
	}
	pluginDirFlag(cmd, &dir, "plugin directory (holds catalog.json)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

// pluginDirFlag registers a `dwcp plugins` subcommand's directory flag:
// --dir, and --plugin-dir as a hidden synonym, which is the flag's name in
// every other dwcp command (an operator's muscle memory should not fail).
func pluginDirFlag(cmd *cobra.Command, dir *string, usage string) {
	cmd.Flags().StringVar(dir, "dir", defaultPluginDir(), usage)
	cmd.Flags().StringVar(dir, "plugin-dir", defaultPluginDir(), "same as --dir")
	_ = cmd.Flags().MarkHidden("plugin-dir")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newPluginsPinCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "pin",
		Short: "Write catalog.json pinning every executable in the plugin directory by SHA-256",
		Long: "Pin trusts what is in the directory now: run it after installing plugins you built or\n" +
			"verified, never to silence a checksum refusal you cannot explain.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := catalog.Pin(dir)
			if err != nil {
				return err
			}
			for _, e := range c.Plugins {
				fmt.Fprintf(cmd.OutOrStdout(), "%s  %s\n", e.SHA256, e.File)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "pinned %d plugins in %s\n", len(c.Plugins), filepath.Join(c.Dir, catalog.FileName))
			return nil
		},
	}
	pluginDirFlag(cmd, &dir, "plugin directory")
	return cmd
}

func newPluginsCheckCommand() *cobra.Command {
	var huge int
	var asJSON bool
	var pluginDir string
	cmd := &cobra.Command{
		Use:   "check PATH|NAME",
		Short: "Run the SDK conformance kit against a plugin binary",
		Long: "check starts the binary as the host would (shared-memory data plane and gRPC fallback)\n" +
			"and runs every conformance check for its kind. It exits 0 only when all pass.\n" +
			"PATH is any plugin binary; a NAME (as `dwcp plugins list` shows it) is looked up in\n" +
			"the plugin directory's catalog.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, err := checkTarget(args[0], pluginDir)
			if err != nil {
				return err
			}
			desc, err := plugin.DescribeBinary(cmd.Context(), path, nil)
			if err != nil {
				return err
			}
			var rep conformance.Report
			switch desc.Kind {
			case sdk.KindCodec:
				rep = conformance.CheckCodecBinary(cmd.Context(), path, conformance.CodecOptions{HugeSize: huge})
			case sdk.KindAccelerator:
				rep = conformance.CheckAcceleratorBinary(cmd.Context(), path, conformance.AccelOptions{})
			case sdk.KindHypervisor:
				rep = conformance.CheckHypervisorBinary(cmd.Context(), path, conformance.HypervisorOptions{})
			default:
				return fmt.Errorf("plugin %s has unknown kind %q", desc.Name, desc.Kind)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else {
				fmt.Fprint(cmd.OutOrStdout(), rep.String())
			}
			if !rep.OK() {
				return &exitError{code: 1, err: fmt.Errorf("plugin %s fails conformance", desc.Name)}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&huge, "huge", 0, "size in bytes of the huge-input check (0: the kit's default)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	pluginDirFlag(cmd, &pluginDir, "plugin directory where a NAME is looked up (its catalog.json)")
	return cmd
}

// checkTarget resolves the argument of `plugins check`: a file that
// exists is checked as it is (a plugin author's fresh build need not be
// pinned anywhere); a bare name is looked up in dir's catalog and must
// pass its pin. Anything
// else gets an error that says both what was tried and what there is,
// rather than the exec failure the describe step would report.
func checkTarget(arg, dir string) (string, error) {
	fi, statErr := os.Stat(arg)
	if statErr == nil {
		if fi.IsDir() {
			return "", fmt.Errorf("%s is a directory; give a plugin binary or a plugin's name", arg)
		}
		return arg, nil
	}
	if !errors.Is(statErr, os.ErrNotExist) {
		return "", statErr
	}
	if strings.ContainsRune(arg, filepath.Separator) {
		return "", fmt.Errorf("no plugin binary at %s", arg)
	}
	cat, err := catalog.Load(dir)
	if err != nil {
		return "", fmt.Errorf("no file %s here, and no catalog to look the name up in: %w", arg, err)
	}
	// By name, the binary must pass the same checks as one the host
	// loads (pinned digest, inside the directory).
	v, err := cat.VerifyEntry(arg)
	if err == nil {
		return v.Path, nil
	}
	if !errors.Is(err, catalog.ErrUnknown) {
		return "", err
	}
	var names []string
	for _, e := range cat.Plugins {
		names = append(names, e.Name)
	}
	return "", fmt.Errorf("no file %s here, and no plugin of that name in %s (catalog has: %s)", arg, cat.Dir, strings.Join(names, ", "))
}
