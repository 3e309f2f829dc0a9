// Package livebench measures live migrations of the test guest for the
// performance report: DWCP against QEMU's plain migration over the
// internet-like WAN-lab profiles (section 2), and DWCP beside QEMU's own
// migration methods — plain, xbzrle, multifd with zstd — (section 4).
//
// It owns the choice of scenarios (profiles, guest sizes, runs, order of
// methods), the sharing of runs between the two parts, and turning
// livelab rows into report tables and charts. It must not measure
// anything itself that livelab does not: every migration goes through
// host/internal/livelab (the real dwcp binary and plugins, real QEMU, the
// WAN lab), and every number or setting it prints was observed in this
// run — a scenario that cannot run here is a row that says why.
package livebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/livelab"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Method keys: "dwcp" and livelab.Native's names.
const (
	methodDWCP  = "dwcp"
	methodPlain = "plain"
	// methodDWCPReturn is not run as such: it is the key under which a
	// DWCP migration is kept when its destination held pages of the guest
	// from an earlier trip (the migration sent some pages as references to
	// DWCP's page history), so that first trips and return trips are
	// never summarised together.
	methodDWCPReturn = "dwcp-return"
	// dwcpMode is the mode DWCP runs in: it detects the link itself.
	dwcpMode = "auto"
	// dirtyKBps is the guest's steady rewrite rate, as in the demo and
	// BenchmarkLiveMigration.
	dirtyKBps = 1024
)

// Scenario choices. Quick mode keeps to one small guest on one profile
// (TCG guests are slow to boot and to migrate on a 2-core machine).
func internetProfiles(env *benchreport.Env) []string {
	return benchreport.Pick(env, []string{"internet"}, []string{"internet", "internet-lossy", "wan-100ms-1g"})
}

func guestSizes(env *benchreport.Env) []int {
	return benchreport.Pick(env, []int{128}, []int{128, 256, 512})
}

// nativeProfiles are the profiles of the comparison with QEMU's own
// methods; quick mode measures only the first.
var nativeProfiles = []string{"internet", "dc"}

func nativeMeasured(env *benchreport.Env, profile string) bool {
	return !env.Quick || profile == nativeProfiles[0]
}

// nativeSize is the guest size of the comparison with QEMU's methods; it
// is one of guestSizes so that the internet runs are shared with
// section 2.
func nativeSize(env *benchreport.Env) int { return benchreport.Pick(env, 128, 256) }

func runsPerCell(env *benchreport.Env) int { return benchreport.Pick(env, 1, 3) }

// methodsFor is what one lab scenario migrates. It depends only on the
// scenario, not on which part asks first, so that the parts can share the
// scenario's runs.
func methodsFor(env *benchreport.Env, profile string, memMiB int) []string {
	m := []string{methodDWCP, methodPlain}
	if memMiB == nativeSize(env) && slices.Contains(nativeProfiles, profile) && nativeMeasured(env, profile) {
		for _, n := range livelab.Native {
			if n != methodPlain {
				m = append(m, n)
			}
		}
	}
	return m
}

// cell is one scenario — a lab profile and a guest size — migrated
// runsPerCell times with each of its methods, one booted guest moving back
// and forth between the lab's two hosts.
type cell struct {
	Profile wanlab.Profile
	MemMiB  int
	Methods []string
	// Runs holds, per completed or partial run, each method's row.
	Runs []map[string]livelab.Row
	// Settings is what QEMU reported as its migration settings after each
	// run of each method.
	Settings map[string][][]setting
	Guest    *guestInfo
	// Missing says why nothing was measured (a prerequisite is absent).
	Missing string
	// Failed is the first failure of each method.
	Failed map[string]string
}

// samples returns f of each run's row of method m.
func (c *cell) samples(m string, f func(livelab.Row) float64) []float64 {
	var out []float64
	for _, r := range c.Runs {
		if row, ok := r[m]; ok {
			out = append(out, f(row))
		}
	}
	return out
}

// paired returns f(row of m)/f(row of base) for each run that has both:
// ratios of measurements taken side by side.
func (c *cell) paired(m, base string, f func(livelab.Row) float64) []float64 {
	var out []float64
	for _, r := range c.Runs {
		a, okA := r[m]
		b, okB := r[base]
		if okA && okB && f(b) > 0 {
			out = append(out, f(a)/f(b))
		}
	}
	return out
}

// prereq is what every scenario needs: the built guest, or why it cannot
// run here.
type prereq struct {
	guest   testguest.Guest
	missing string
}

// prerequisites checks, once per report run, what the live migrations
// need, the way testguest.Require and wanlab.SkipUnlessAvailable do for
// tests. A missing piece is a reason; a guest build that fails with its
// inputs present is an error.
func prerequisites(ctx context.Context, env *benchreport.Env) (prereq, error) {
	v, err := env.Memo("livebench prerequisites", func() (any, error) {
		if reason := missingPrerequisite(ctx, env); reason != "" {
			return prereq{missing: reason}, nil
		}
		env.Logf("livebench: building (or reusing) the test guest ...")
		g, err := testguest.Build(ctx, "")
		if err != nil {
			return prereq{missing: "the test guest did not build"}, fmt.Errorf("build test guest: %w", err)
		}
		return prereq{guest: g}, nil
	})
	p, _ := v.(prereq)
	return p, err
}

func missingPrerequisite(ctx context.Context, env *benchreport.Env) string {
	if err := wanlab.Available(); err != nil {
		return "no WAN lab here: " + err.Error()
	}
	if reason := testguest.Missing(); reason != "" {
		return "the test guest cannot run here: " + reason
	}
	if env.Dwcp == "" {
		return "no dwcp binary given to the report (Options.Dwcp)"
	}
	if _, err := os.Stat(env.Dwcp); err != nil {
		return "dwcp binary: " + err.Error()
	}
	host, err := env.Plugins(ctx)
	if err != nil {
		return "plugins: " + err.Error()
	}
	if _, ok := host.Get("qemu"); !ok {
		for _, s := range host.Skipped() {
			if s.Name == "qemu" {
				return fmt.Sprintf("the qemu hypervisor plugin in %s was skipped: %v", env.PluginDir, s.Reason)
			}
		}
		return "no qemu hypervisor plugin in " + env.PluginDir
	}
	return ""
}

// measure returns the scenario's runs, measuring them on first use; the
// two parts share them through env.Memo. The cell is never nil; it holds
// what was measured even when err reports a failure.
func measure(ctx context.Context, env *benchreport.Env, profile string, memMiB int) (*cell, error) {
	key := fmt.Sprintf("livebench %s %d MiB", profile, memMiB)
	v, err := env.Memo(key, func() (any, error) { return runCell(ctx, env, profile, memMiB) })
	c, _ := v.(*cell)
	if c == nil {
		c = &cell{MemMiB: memMiB, Missing: "not measured"}
	}
	return c, err
}

// migrationBudget bounds one migration: moving the whole RAM four times
// at the rate TCP may reach on the profile, plus two minutes for the start
// of dwcp, QEMU and the guest checks. A migration that has not ended by
// then failed. Loss cuts TCP far below the link rate (12-32 Mbit/s of
// internet-lossy's 200, docs/modes.md), hence the division.
func migrationBudget(p wanlab.Profile, memMiB int) time.Duration {
	wire := time.Duration(0)
	if rate := float64(p.Rate) / (1 + 1000*p.Loss); rate > 0 {
		wire = time.Duration(float64(memMiB<<20) * 8 * 4 / rate * float64(time.Second))
	}
	return wire + 2*time.Minute
}

func runCell(ctx context.Context, env *benchreport.Env, profile string, memMiB int) (*cell, error) {
	c := &cell{MemMiB: memMiB, Methods: methodsFor(env, profile, memMiB),
		Settings: map[string][][]setting{}, Failed: map[string]string{}}
	prof, err := wanlab.LookupProfile(profile)
	if err != nil {
		c.Missing = err.Error()
		return c, err
	}
	c.Profile = prof
	pr, err := prerequisites(ctx, env)
	if err != nil || pr.missing != "" {
		c.Missing = pr.missing
		return c, err
	}
	runs := runsPerCell(env)
	per := migrationBudget(prof, memMiB)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute+time.Duration(runs*len(c.Methods))*per)
	defer cancel()
	name := fmt.Sprintf("%s, %d MiB guest", profile, memMiB)

	env.Logf("livebench: %s: starting the WAN lab (%s) and dwcp serve on both hosts ...", name, prof.Summary())
	lab, err := livelab.New(ctx, livelab.Config{Profile: profile, Dwcp: env.Dwcp, PluginDir: env.PluginDir,
		Guest: testguest.Config{Guest: pr.guest, MemMiB: memMiB, DirtyKBps: dirtyKBps}})
	if err != nil {
		c.Missing = "the lab did not start: " + oneLine(err.Error())
		return c, fmt.Errorf("%s: start lab: %w", name, err)
	}
	defer lab.Close()
	env.Logf("livebench: %s: booting the guest on %s (TCG) ...", name, lab.A.Name)
	start := time.Now()
	vm, err := lab.Boot(ctx, lab.A)
	if err != nil {
		c.Missing = "the guest did not boot: " + oneLine(err.Error())
		return c, fmt.Errorf("%s: boot guest: %w", name, err)
	}
	defer func() { vm.Close() }()
	if c.Guest, err = readGuest(ctx, vm, pr.guest, memMiB); err != nil {
		c.Missing = "the guest did not report its workload: " + oneLine(err.Error())
		return c, fmt.Errorf("%s: %w", name, err)
	}
	// Let the workload run a few seconds, so that the first migration
	// does not meet a guest fresh from its setup.
	if hb, err := vm.Heartbeat(); err == nil {
		if _, err := vm.WaitHeartbeat(ctx, hb.N+3); err != nil {
			c.Missing = "the guest stopped beating: " + oneLine(err.Error())
			return c, fmt.Errorf("%s: %w", name, err)
		}
	}
	env.Logf("livebench: %s: guest up after %s", name, time.Since(start).Round(100*time.Millisecond))

	var errs []error
	at := lab.A
	for r := range runs {
		rows := map[string]livelab.Row{}
		c.Runs = append(c.Runs, rows)
		// Rotating the order spreads whatever the guest's state does to
		// one position over every method.
		order := append(slices.Clone(c.Methods[r%len(c.Methods):]), c.Methods[:r%len(c.Methods)]...)
		for _, m := range order {
			to := lab.B
			if at == lab.B {
				to = lab.A
			}
			env.Logf("livebench: %s: run %d/%d: %s %s -> %s ...", name, r+1, runs, label(m), at.Name, to.Name)
			row, next, err := migrate(ctx, lab, vm, at, to, m, per)
			if err != nil {
				env.Logf("livebench: %s: %s FAILED: %s", name, label(m), oneLine(err.Error()))
				if _, seen := c.Failed[m]; !seen {
					c.Failed[m] = failureText(err)
				}
				if m == methodDWCP || ctx.Err() != nil {
					// DWCP failing is the report's failure.
					errs = append(errs, fmt.Errorf("%s, run %d: %s %s -> %s: %w", name, r+1, label(m), at.Name, to.Name, err))
				}
				// A baseline that fails (QEMU's own migration has left
				// the destination guest dead here, under TCG) is a
				// result for that row, stated in its cells. The source
				// VM stopped at the switchover: resume it and go on.
				if ctx.Err() == nil {
					if st, serr := vm.Status(ctx); serr == nil && st == "postmigrate" {
						_, _ = vm.QMP(ctx, "cont", nil)
					}
				}
				if st, serr := vm.Status(ctx); serr != nil || st != "running" || ctx.Err() != nil {
					errs = append(errs, fmt.Errorf("%s, run %d: the guest did not survive %s and the scenario stopped", name, r+1, label(m)))
					return c, errors.Join(errs...)
				}
				continue
			}
			key := m
			if m == methodDWCP && row.KnownPages > 0 {
				key = methodDWCPReturn
			}
			c.Settings[key] = append(c.Settings[key], readSettings(ctx, vm))
			vm.Close()
			vm, at = next, to
			rows[key] = row
			env.Logf("livebench: %s:   %.1f s, downtime %d ms, %s on the link (%.2fx guest RAM), %s",
				name, row.Total.Seconds(), row.Downtime.Milliseconds(), benchreport.FormatBytes(float64(row.WireBytes)),
				float64(row.WireBytes)/float64(memMiB<<20), row.Heartbeat)
		}
	}
	return c, errors.Join(errs...)
}

// failureText is a failed migration in one line, leading with the guest's
// kernel panic when its serial log shows one (the error carries the log's
// last lines, which a one-line cut would lose).
func failureText(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "Kernel panic"); i >= 0 {
		why, _, _ := strings.Cut(msg[i:], "\n")
		return "the destination guest's kernel panicked after the migration (serial log: " + strings.TrimSpace(why) + "); " + oneLine(msg)
	}
	return oneLine(msg)
}

// methodCaps are the migration capabilities any of the methods turns on.
var methodCaps = []string{"xbzrle", "multifd", "auto-converge", "return-path", "events"}

// migrate runs one migration of vm from `from` to `to` with method m.
//
// It first turns methodCaps off on the source, so that every method
// starts from QEMU's defaults rather than from what the guest's previous
// migration left on its QEMU: a guest that arrived by xbzrle keeps xbzrle
// on, and neither livelab nor DWCP's qemu plugin turns off what it does
// not use (runs in rotating order measured DWCP with xbzrle under it).
func migrate(ctx context.Context, lab *livelab.Env, vm *testguest.VM, from, to *wanlab.Host, m string, budget time.Duration) (livelab.Row, *testguest.VM, error) {
	ctx, cancel := context.WithTimeout(ctx, budget+30*time.Second)
	defer cancel()
	caps := make([]map[string]any, len(methodCaps))
	for i, c := range methodCaps {
		caps[i] = map[string]any{"capability": c, "state": false}
	}
	if _, err := vm.QMP(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}); err != nil {
		return livelab.Row{}, nil, fmt.Errorf("reset migration capabilities of the source: %w", err)
	}
	if m == methodDWCP {
		return lab.DWCP(ctx, vm, from, to, dwcpMode, "--max-time", budget.String())
	}
	return lab.QEMU(ctx, vm, to, m)
}

func label(m string) string {
	switch m {
	case methodDWCP:
		return "DWCP (mode " + dwcpMode + "), no page history"
	case methodDWCPReturn:
		return "DWCP (mode " + dwcpMode + "), with page history"
	case "multifd-zstd":
		return "QEMU multifd+zstd"
	default:
		return "QEMU " + m
	}
}

func oneLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	const max = 200
	if len(s) > max {
		s = s[:max] + " ..."
	}
	return s
}
