package livelab

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/buildtest"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
)

// TestDWCPSuspendMemory migrates a guest that dirties memory (256 MiB,
// 1 MiB/s rewritten) through DWCP across the lab with `dwcp migrate
// --suspend`, then reads guest RAM from both stopped QEMUs (the source in
// postmigrate, the destination left paused) with pmemsave and compares
// them byte for byte, before the destination ever runs: the experiment
// docs/migration.md ("Data integrity") names for the guest faults seen
// after migrations under TCG. Then it continues the destination and checks
// the guest goes on. DWCP_SUSPEND_RUNS repeats it (default 1).
func TestDWCPSuspendMemory(t *testing.T) {
	g := testguest.Require(t)
	wanlab.SkipUnlessAvailable(t)
	runs := 1
	if n, err := strconv.Atoi(os.Getenv("DWCP_SUSPEND_RUNS")); err == nil && n > 0 {
		runs = n
	}
	dwcp, plugins := buildtest.Product(t, buildtest.Zstd, buildtest.S2, buildtest.LZ4, buildtest.QEMU)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(runs)*4*time.Minute+2*time.Minute)
	defer cancel()
	const memMiB = 256
	env, err := New(ctx, Config{Profile: "internet", Dwcp: dwcp, PluginDir: plugins,
		Guest: testguest.Config{Guest: g, MemMiB: memMiB, DirtyKBps: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	for i := range runs {
		vm, err := env.Boot(ctx, env.A)
		if err != nil {
			t.Fatal(err)
		}
		diff, regs, hb, dst, err := suspendCompareResume(ctx, t, env, vm, memMiB, nil)
		if err != nil {
			vm.Close()
			t.Fatalf("run %d: %v", i, err)
		}
		if len(regs) > 0 {
			t.Errorf("run %d: the destination's vCPU registers after the load are not the source's at the stop:\n%s", i, strings.Join(regs, "\n"))
		}
		if diff.Pages > 0 {
			t.Errorf("run %d: the destination's RAM after the load is not the source's at the stop: %s", i, diff)
		} else {
			t.Logf("run %d: %s; guest after cont: %s", i, diff, hb)
		}
		if i == 0 {
			// The comparison can see a difference: once the guest ran
			// on the destination (it rewrites 1 MiB/s), stopped again
			// it no longer matches the source.
			if _, err := dst.QMP(ctx, "stop", nil); err != nil {
				t.Fatal(err)
			}
			ran, err := CompareRAM(ctx, vm, dst, GuestRAM(uint64(memMiB)<<20), env.Dir())
			if err != nil {
				t.Fatal(err)
			}
			if ran.Pages == 0 {
				t.Errorf("the destination ran for a while and its RAM still equals the source's: the comparison sees nothing")
			}
			t.Logf("control: after running on the destination, %s", describeDiff(ran))
		}
		dst.Close()
		vm.Close()
	}
}

// suspendCompareResume migrates vm A->B with --suspend, compares RAM and
// vCPU registers (the differing register lines), and resumes the
// destination, which it returns unless it fails. Differences are returned,
// not failed on.
func suspendCompareResume(ctx context.Context, t *testing.T, env *Env, vm *testguest.VM, memMiB int, extra []string) (diff RAMDiff, regDiff []string, hb string, dst *testguest.VM, err error) {
	t.Helper()
	row, dst, err := env.DWCPSuspended(ctx, vm, env.A, env.B, "internet", extra...)
	if err != nil {
		return RAMDiff{}, nil, "", nil, err
	}
	defer func() {
		if err != nil {
			dst.Close()
			dst = nil
		}
	}()
	t.Logf("suspended migration: %.1f s, %d passes, %d bytes on the link, stop to paused destination %s",
		row.Total.Seconds(), row.Passes, row.WireBytes, row.Downtime.Round(time.Millisecond))
	start := time.Now()
	if diff, err = CompareRAM(ctx, vm, dst, GuestRAM(uint64(memMiB)<<20), env.Dir()); err != nil {
		return diff, nil, "", dst, err
	}
	t.Logf("compared %d MiB in %s", diff.Compared>>20, time.Since(start).Round(time.Millisecond))
	// The vCPU state too: a fault at the resume (RIP 0) could come from
	// it rather than from RAM. In clean runs the dumps are identical.
	regs := [2]string{}
	for i, v := range []*testguest.VM{vm, dst} {
		if regs[i], err = CPURegisters(ctx, v); err != nil {
			return diff, nil, "", dst, err
		}
	}
	if regDiff = DiffLines(regs[0], regs[1]); len(regDiff) == 0 {
		t.Logf("vCPU registers identical (%d lines)", strings.Count(regs[0], "\n"))
	}
	hb, err = env.ResumeSuspended(ctx, vm, dst)
	return diff, regDiff, hb, dst, err
}

// describeDiff is a short form of a difference for a soak's summary.
func describeDiff(d RAMDiff) string {
	if d.Pages == 0 {
		return "RAM identical"
	}
	s := d.String()
	if i := strings.IndexByte(s, '\n'); i > 0 {
		return s[:i]
	}
	return s
}
