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
// arguments (space separated).
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
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n)*4*time.Minute)
	defer cancel()
	env, err := New(ctx, Config{Profile: profile, Dwcp: dwcp, PluginDir: plugins,
		Guest: testguest.Config{Guest: g, MemMiB: 256, DirtyKBps: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	faults := 0
	for i := range n {
		vm, err := env.Boot(ctx, env.A)
		if err != nil {
			t.Fatal(err)
		}
		row, dst, err := env.DWCP(ctx, vm, env.A, env.B, "internet", extra...)
		vm.Close()
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		t.Logf("run %d: %.1f s, %d passes, %d bytes on the link", i, row.Total.Seconds(), row.Passes, row.WireBytes)
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
	if faults > 0 {
		t.Errorf("%d of %d guests faulted after a DWCP migration", faults, n)
	}
}
