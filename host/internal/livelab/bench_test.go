package livelab

import (
	"context"
	"github.com/dwcp/dwcp/host/internal/buildtest"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
)

// BenchmarkLiveMigration migrates the same guest, in the same lab and run,
// through DWCP and with QEMU's own migration (plain, multifd+zstd, xbzrle),
// on a datacenter-like and an internet-like profile, and reports each
// method against QEMU plain measured in the same run: time, downtime and
// bytes on the link as ratios (below 1 is better than QEMU plain).
func BenchmarkLiveMigration(b *testing.B) {
	g := testguest.Require(b)
	wanlab.SkipUnlessAvailable(b)
	dwcp, plugins := buildtest.Product(b, buildtest.Zstd, buildtest.S2, buildtest.LZ4, buildtest.QEMU)
	for _, profile := range []string{"dc", "internet"} {
		b.Run(profile, func(b *testing.B) {
			for b.Loop() {
				runComparison(b, profile, g, dwcp, plugins)
			}
		})
	}
}

func runComparison(b *testing.B, profile string, g testguest.Guest, dwcp, plugins string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	env, err := New(ctx, Config{Profile: profile, Dwcp: dwcp, PluginDir: plugins,
		Guest: testguest.Config{Guest: g, MemMiB: 256, DirtyKBps: 1024}})
	if err != nil {
		b.Fatal(err)
	}
	defer env.Close()
	vm, err := env.Boot(ctx, env.A)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { vm.Close() }()
	rows := map[string]Row{}
	row, next, err := env.DWCP(ctx, vm, env.A, env.B, "auto")
	if err != nil {
		b.Fatal(err)
	}
	vm.Close()
	vm, rows["dwcp"] = next, row
	for i, m := range Native {
		to := env.A
		if i%2 == 1 {
			to = env.B
		}
		row, next, err := env.QEMU(ctx, vm, to, m)
		if err != nil {
			b.Logf("qemu %s failed: %v", m, err)
			break
		}
		vm.Close()
		vm, rows[m] = next, row
	}
	plain, ok := rows["plain"]
	if !ok {
		b.Fatal("QEMU plain did not complete: no baseline")
	}
	for name, r := range rows {
		b.Logf("%s: %+v", name, r)
		if name == "plain" {
			continue
		}
		b.ReportMetric(r.Total.Seconds()/plain.Total.Seconds(), name+"-time/plain")
		b.ReportMetric(float64(r.WireBytes)/float64(plain.WireBytes), name+"-bytes/plain")
		if plain.Downtime > 0 {
			b.ReportMetric(float64(r.Downtime)/float64(plain.Downtime), name+"-downtime/plain")
		}
	}
	b.ReportMetric(float64(rows["dwcp"].WireBytes)/float64(256<<20), "dwcp-bytes/RAM")
}
