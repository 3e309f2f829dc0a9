package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/dwcp/dwcp/host/internal/livelab"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/spf13/cobra"
)

func newDemoCommand() *cobra.Command {
	var pluginDir, profile, mode string
	var mem, dirty int
	var asJSON bool
	var logPath string
	var dwcpOnly bool
	var migrateArgs []string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Boot a small Linux guest, migrate it live through DWCP over an emulated WAN link, then with QEMU's own migration, and compare",
		Long: "demo builds (or reuses) the test guest, creates a two-host WAN lab (root; network\n" +
			"namespaces and a user-space packet shaper), runs `dwcp serve` on both hosts, boots the\n" +
			"guest on host A and migrates it: A->B through DWCP, B->A with QEMU's plain migration,\n" +
			"A->B through DWCP again (B still holds the pages of the first trip: DWCP's page\n" +
			"history), B->A with QEMU multifd+zstd, A->B with QEMU xbzrle. Each migration is\n" +
			"checked (the destination runs, the guest's heartbeat continues) and measured the same way.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := cmd.ErrOrStderr()
			if err := wanlab.Available(); err != nil {
				return fmt.Errorf("the demo needs the WAN lab: %w (run as root on Linux with /dev/net/tun)", err)
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			fmt.Fprintln(log, "building (or reusing) the test guest ...")
			g, err := testguest.Build(ctx, "")
			if err != nil {
				return err
			}
			prof, err := wanlab.LookupProfile(profile)
			if err != nil {
				return err
			}
			fmt.Fprintf(log, "starting the WAN lab (%s) and dwcp serve on both hosts ...\n", prof.Summary())
			detail := io.Discard
			if logPath != "" {
				f, err := os.Create(logPath)
				if err != nil {
					return fmt.Errorf("demo log: %w", err)
				}
				defer f.Close()
				detail = f
			}
			env, err := livelab.New(ctx, livelab.Config{Profile: profile, Dwcp: self, PluginDir: pluginDir,
				Guest: testguest.Config{Guest: g, MemMiB: mem, DirtyKBps: dirty}, Log: detail})
			if err != nil {
				return err
			}
			defer env.Close()
			fmt.Fprintf(log, "booting a %d MiB guest on %s (TCG: this takes a while) ...\n", mem, env.A.Name)
			vm, err := env.Boot(ctx, env.A)
			if err != nil {
				return err
			}
			defer func() { vm.Close() }()
			var rows []livelab.Row
			last := "booting"
			step := func(what string, f func() (livelab.Row, *testguest.VM, error)) error {
				// A guest that broke after the previous migration (its checks
				// passed, its kernel failed later) must not be blamed on the
				// next method: it has to beat again before the next one.
				if hb, err := vm.Heartbeat(); err == nil {
					hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					_, err = vm.WaitHeartbeat(hctx, hb.N)
					cancel()
					if err != nil {
						return fmt.Errorf("before %s: the guest stopped after %s: %w", what, last, err)
					}
				}
				last = what
				fmt.Fprintf(log, "%s ...\n", what)
				row, next, err := f()
				if err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
				vm.Close()
				vm = next
				rows = append(rows, row)
				fmt.Fprintf(log, "  done in %.1f s, downtime %d ms, %s on the link, heartbeat %s\n",
					row.Total.Seconds(), row.Downtime.Milliseconds(), bytesString(row.WireBytes), row.Heartbeat)
				return nil
			}
			// Let the workload run a little so memory is not freshly booted.
			time.Sleep(5 * time.Second)
			// The order keeps the guest where each method needs it: DWCP
			// A->B, QEMU plain back to A, DWCP A->B again (B still holds
			// the pages of the first trip: DWCP's page history), then
			// QEMU's best built-in options. xbzrle comes last: QEMU 7.2's
			// xbzrle has left guests panicked here (docs/migration.md).
			dwcp := func(label string, from, to *wanlab.Host) func() (livelab.Row, *testguest.VM, error) {
				return func() (livelab.Row, *testguest.VM, error) {
					row, next, err := env.DWCP(ctx, vm, from, to, mode, migrateArgs...)
					row.Method = label
					return row, next, err
				}
			}
			if err := step("migrating A->B live through DWCP (mode "+mode+")", dwcp("dwcp "+mode, env.A, env.B)); err != nil {
				return err
			}
			natives := livelab.Native
			if dwcpOnly {
				natives = nil
			}
			qemu := func(m string, to *wanlab.Host) error {
				err := step("migrating with QEMU's own migration ("+m+") to "+to.Name, func() (livelab.Row, *testguest.VM, error) {
					return env.QEMU(ctx, vm, to, m)
				})
				if err != nil {
					// QEMU's own run failed: show it in the table and stop
					// (the guest did not survive it).
					fmt.Fprintf(log, "  FAILED: %v\n", err)
					rows = append(rows, livelab.Row{Method: "qemu " + m, Note: "failed: " + firstLine(err.Error())})
				}
				return err
			}
			if len(natives) > 0 {
				if qemu(natives[0], env.A) != nil {
					natives = nil
				}
			} else if err := step("migrating B->A live through DWCP", dwcp("dwcp "+mode+" back", env.B, env.A)); err != nil {
				return err
			}
			if natives != nil || dwcpOnly {
				if err := step("migrating A->B live through DWCP again (B holds the pages of the first trip)", dwcp("dwcp "+mode+" again", env.A, env.B)); err != nil {
					return err
				}
			}
			for i, m := range natives {
				if i == 0 {
					continue
				}
				to := env.A
				if i%2 == 0 {
					to = env.B
				}
				if qemu(m, to) != nil {
					break
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			printRows(cmd.OutOrStdout(), prof, mem, rows)
			return nil
		},
	}
	cmd.Flags().StringVar(&pluginDir, "plugin-dir", defaultPluginDir(), "plugin directory (with the qemu plugin and codecs, pinned)")
	cmd.Flags().StringVar(&profile, "profile", "internet", "WAN lab `PROFILE` (dwcp lab profiles lists them)")
	cmd.Flags().StringVar(&mode, "mode", "internet", "DWCP mode for the migration")
	cmd.Flags().IntVar(&mem, "mem", 256, "guest RAM in MiB")
	cmd.Flags().IntVar(&dirty, "dirty-kbps", 1024, "guest dirty rate in KiB/s")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the rows as JSON")
	cmd.Flags().StringVar(&logPath, "log", "", "write the lab's detailed log (dwcp serve output, each migration's full summary) to this file")
	cmd.Flags().StringArrayVar(&migrateArgs, "migrate-arg", nil, "extra argument for dwcp migrate (repeatable), e.g. --migrate-arg=--converge=none")
	cmd.Flags().BoolVar(&dwcpOnly, "dwcp-only", false, "migrate through DWCP only (skip QEMU's own methods)")
	return cmd
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

func printRows(w io.Writer, prof wanlab.Profile, mem int, rows []livelab.Row) {
	fmt.Fprintf(w, "\nLive migration of a %d MiB Linux guest (QEMU 7.2, TCG) over %s\n\n", mem, prof.Summary())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "method\tdirection\ttotal s\tdowntime ms\tQEMU-reported downtime ms\tbytes on the link\tvs QEMU plain\tQEMU stream\theartbeat\t")
	var plain uint64
	for _, r := range rows {
		if r.Method == "qemu plain" {
			plain = r.WireBytes
		}
	}
	for _, r := range rows {
		if r.Note != "" && r.Total == 0 {
			fmt.Fprintf(tw, "%s\t%s\t\t\t\t\t\t\t\t\n", r.Method, r.Note)
			continue
		}
		vs := "-"
		if plain > 0 {
			vs = fmt.Sprintf("%.0f%%", 100*float64(r.WireBytes)/float64(plain))
		}
		fmt.Fprintf(tw, "%s\t%s->%s\t%.1f\t%d\t%d\t%s\t%s\t%s\t%s\t\n", r.Method, r.From, r.To, r.Total.Seconds(),
			r.Downtime.Milliseconds(), r.QEMUDowntime.Milliseconds(), bytesString(r.WireBytes), vs, bytesString(r.StreamBytes), r.Heartbeat)
	}
	tw.Flush()
	fmt.Fprintln(w, "\ntotal: from the command (DWCP) or from starting the destination QEMU (QEMU's own) to the")
	fmt.Fprintln(w, "destination running. downtime: DWCP measures from the source QEMU's STOP event to the")
	fmt.Fprintln(w, "destination VM running (by the destination's clock when it agrees with the source's); for")
	fmt.Fprintln(w, "QEMU's own migration both QEMUs are polled every 2 ms (source leaves running -> destination")
	fmt.Fprintln(w, "running). bytes on the link: IP packets source->destination through the lab.")
}
