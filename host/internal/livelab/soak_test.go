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

// TestDWCPSoak migrates freshly booted guests A->B through DWCP, as the
// demo's first trip does, and watches each destination for a kernel fault
// for 45 s: the counterpart of testguest's TestQEMUOnlySoak (QEMU alone),
// for the guest faults docs/migration.md describes. It runs only when
// DWCP_SOAK names the number of migrations; DWCP_SOAK_PROFILE picks the lab
// profile (default internet) and DWCP_SOAK_ARGS adds `dwcp migrate`
// arguments (space separated). DWCP_SOAK_COMPARE=1 migrates with
// --suspend and compares the source's RAM at the stop with the
// destination's after the load, before it runs, and the vCPU registers
// likewise (TestDWCPSuspendMemory),
// so that a fault can be told apart: memory that differed, or not.
func TestDWCPSoak(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("DWCP_SOAK"))
	if n <= 0 {
		t.Skip("set DWCP_SOAK=N to run N DWCP migrations and watch the guests")
	}
	g := testguest.Require(t)
	wanlab.SkipUnlessAvailable(t)
	dwcp, plugins := buildtest.Product(t, buildtest.Zstd, buildtest.S2, buildtest.LZ4, buildtest.QEMU)
	profile := os.Getenv("DWCP_SOAK_PROFILE")
	if profile == "" {
		profile = "internet"
	}
	extra := strings.Fields(os.Getenv("DWCP_SOAK_ARGS"))
	compare := os.Getenv("DWCP_SOAK_COMPARE") == "1"
	const memMiB = 256
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*4*time.Minute)
	defer cancel()
	env, err := New(ctx, Config{Profile: profile, Dwcp: dwcp, PluginDir: plugins,
		Guest: testguest.Config{Guest: g, MemMiB: memMiB, DirtyKBps: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	faults, differed := 0, 0
	for i := range n {
		vm, err := env.Boot(ctx, env.A)
		if err != nil {
			t.Fatal(err)
		}
		var dst *testguest.VM
		if compare {
			dst, err = soakCompare(ctx, t, env, vm, memMiB, extra, i, &differed)
		} else {
			var row Row
			row, dst, err = env.DWCP(ctx, vm, env.A, env.B, "internet", extra...)
			if err == nil {
				t.Logf("run %d: %.1f s, %d passes, %d bytes on the link", i, row.Total.Seconds(), row.Passes, row.WireBytes)
			}
		}
		vm.Close()
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		if dst == nil {
			faults++
			continue
		}
		watch, stop := context.WithTimeout(ctx, 45*time.Second)
		f := dst.WatchKernelFault(watch)
		stop()
		if f != "" {
			faults++
			t.Logf("run %d: guest fault after migration:\n%s", i, f)
		} else if hb, err := dst.Heartbeat(); err != nil {
			faults++
			t.Logf("run %d: no heartbeat after migration: %v", i, err)
		} else {
			t.Logf("run %d: guest fine (heartbeat %d)", i, hb.N)
		}
		dst.Close()
	}
	t.Logf("%d of %d destinations faulted (profile %s, args %q)", faults, n, profile, extra)
	if compare {
		t.Logf("%d of %d destinations' RAM or vCPU registers differed from the source's after the load", differed, n)
	}
	if faults > 0 || differed > 0 {
		t.Errorf("%d of %d guests faulted after a DWCP migration, %d differed in RAM or registers", faults, n, differed)
	}
}

// soakCompare is one soak run with --suspend (suspendCompareResume). A
// RAM or register difference is logged in full and counted. When the
// guest check after cont then fails too, that is logged and the run counts
// as a fault (nil VM), so the soak records what the difference did; a
// failed check with identical state is an error.
func soakCompare(ctx context.Context, t *testing.T, env *Env, vm *testguest.VM, memMiB int, extra []string, i int, differed *int) (*testguest.VM, error) {
	diff, regs, hb, dst, err := suspendCompareResume(ctx, t, env, vm, memMiB, extra)
	if diff.Pages > 0 {
		t.Logf("run %d: RAM DIFFERS between the source at the stop and the destination after the load:\n%s", i, diff)
	} else if diff.Compared > 0 {
		t.Logf("run %d: %s", i, describeDiff(diff))
	}
	if len(regs) > 0 {
		t.Logf("run %d: vCPU REGISTERS DIFFER between the source at the stop and the destination after the load:\n%s", i, strings.Join(regs, "\n"))
	}
	differs := diff.Pages > 0 || len(regs) > 0
	if differs {
		*differed++
	}
	if err != nil && differs {
		t.Logf("run %d: guest after cont: %v", i, err)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	t.Logf("run %d: after cont: %s", i, hb)
	return dst, nil
}
