package livelab

import (
	"context"
	"github.com/dwcp/dwcp/host/internal/buildtest"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/wanlab"
)

// TestLiveMigration migrates a real guest (QEMU/TCG, 192 MiB, steady dirty
// rate) between two WAN-lab hosts with the real dwcp binary and plugins:
// through a 5 s link cut (must complete), with the destination host killed
// mid-way (the source VM must keep running), and with a guest that cannot
// converge on a throttled link (must be cancelled with a clear report).
func TestLiveMigration(t *testing.T) {
	g := testguest.Require(t)
	wanlab.SkipUnlessAvailable(t)
	dwcp, plugins := buildtest.Product(t, buildtest.Zstd, buildtest.S2, buildtest.LZ4, buildtest.QEMU)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	env, err := New(ctx, Config{Profile: "internet", Dwcp: dwcp, PluginDir: plugins,
		Guest: testguest.Config{Guest: g, MemMiB: 192, DirtyKBps: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	vm, err := env.Boot(ctx, env.A)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { vm.Close() }()

	var first Row
	t.Run("link cut of 5 s mid-migration", func(t *testing.T) {
		env.Lab.Cut(time.Now().Add(4*time.Second), 5*time.Second)
		row, dst, err := env.DWCP(ctx, vm, env.A, env.B, "auto")
		first = row
		if err != nil {
			t.Fatalf("migration through a link cut failed: %v", err)
		}
		st, err := vm.Status(ctx)
		if err != nil || st != "postmigrate" {
			t.Errorf("source after a completed migration: %q %v, want postmigrate (stopped)", st, err)
		}
		t.Logf("%+v", row)
		if row.WireBytes >= row.StreamBytes {
			t.Errorf("%d bytes on the link for a %d-byte QEMU stream", row.WireBytes, row.StreamBytes)
		}
		vm.Close()
		vm = dst
	})
	if t.Failed() {
		return
	}

	t.Run("destination killed mid-migration", func(t *testing.T) {
		hb0, _ := vm.Heartbeat()
		done := make(chan error, 1)
		go func() {
			// Without the page history: the guest's pages went A->B
			// just before, and with it too little would stream for
			// the kill to land mid-migration.
			_, _, err := env.DWCP(ctx, vm, env.B, env.A, "auto", "--history=false")
			done <- err
		}()
		// Kill the destination once the stream is well under way.
		start := env.linkBytes(env.B, env.A)
		for deadline := time.Now().Add(2 * time.Minute); env.linkBytes(env.B, env.A)-start < 20<<20; {
			if time.Now().After(deadline) {
				t.Fatal("the migration never started streaming")
			}
			select {
			case err := <-done:
				t.Fatalf("migration ended before the destination was killed: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
		}
		env.KillServe(env.A)
		var err error
		select {
		case err = <-done:
		case <-time.After(3 * time.Minute):
			t.Fatal("dwcp migrate did not return after its destination died")
		}
		if err == nil {
			t.Fatal("migration to a killed destination reported success")
		}
		t.Logf("dwcp migrate reported: %s", firstLines(err.Error(), 3))
		st, serr := vm.Status(ctx)
		if serr != nil || st != "running" {
			t.Fatalf("source VM after the failed migration: %q %v, want running", st, serr)
		}
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		if _, err := vm.WaitHeartbeat(wctx, hb0.N+3); err != nil {
			t.Fatalf("source VM not responsive after the failed migration: %v", err)
		}
		if err := env.StartServe(ctx, env.A); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("interrupted dwcp migrate cancels the migration", func(t *testing.T) {
		// dwcp migrate hands the migration to B's dwcp serve over the
		// control socket; Ctrl-C on the command must cancel it there.
		hb0, _ := vm.Heartbeat()
		ictx, interrupt := context.WithCancel(ctx)
		defer interrupt()
		done := make(chan error, 1)
		go func() {
			_, _, err := env.DWCP(ictx, vm, env.B, env.A, "auto", "--history=false")
			done <- err
		}()
		start := env.linkBytes(env.B, env.A)
		for deadline := time.Now().Add(2 * time.Minute); env.linkBytes(env.B, env.A)-start < 10<<20; {
			if time.Now().After(deadline) {
				t.Fatal("the migration never started streaming")
			}
			select {
			case err := <-done:
				t.Fatalf("migration ended before the interrupt: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
		}
		interrupt()
		var err error
		select {
		case err = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("dwcp migrate did not return after Ctrl-C")
		}
		if err == nil || !strings.Contains(err.Error(), "interrupted") {
			t.Fatalf("interrupted migration: %v", err)
		}
		t.Logf("dwcp migrate reported: %s", firstLines(err.Error(), 2))
		// The daemon cancels on its own schedule: wait for the VM to
		// run again on the source, then for its heartbeat.
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		if err := vm.WaitStatus(wctx, "running"); err != nil {
			t.Fatalf("source VM after the interrupted migration: %v", err)
		}
		if _, err := vm.WaitHeartbeat(wctx, hb0.N+3); err != nil {
			t.Fatalf("source VM not responsive after the interrupted migration: %v", err)
		}
	})

	t.Run("non-convergence is reported and cancelled", func(t *testing.T) {
		// 0.5 Mbit/s carries less than the guest dirties.
		link := env.Lab.Profile().Link()
		link.Rate = 500_000
		if err := env.Lab.SetAll(link); err != nil {
			t.Fatal(err)
		}
		_, _, err := env.DWCP(ctx, vm, env.B, env.A, "internet", "--converge", "none", "--max-time", "40s", "--history=false")
		if err == nil {
			t.Fatal("a migration that cannot converge reported success")
		}
		if !strings.Contains(err.Error(), "did not finish within") {
			t.Fatalf("unclear report: %v", firstLines(err.Error(), 5))
		}
		t.Logf("dwcp migrate reported: %s", firstLines(err.Error(), 2))
		st, serr := vm.Status(ctx)
		if serr != nil || st != "running" {
			t.Fatalf("source VM after the cancelled migration: %q %v, want running", st, serr)
		}
	})

	t.Run("back B->A with the page history", func(t *testing.T) {
		// Both daemons recorded the first migration (A->B); the guest,
		// on B since, goes back: the pages it has not rewritten since
		// travel as references. The checks of every migration (the guest
		// runs on, heartbeat continues) apply.
		if first.WireBytes == 0 {
			t.Skip("the first migration did not run")
		}
		if err := env.Lab.SetAll(env.Lab.Profile().Link()); err != nil {
			t.Fatal(err)
		}
		row, dst, err := env.DWCP(ctx, vm, env.B, env.A, "internet")
		if err != nil {
			t.Fatalf("migration back with history: %v", err)
		}
		vm.Close()
		vm = dst
		t.Logf("A->B first: %d link bytes; B->A with history: %d link bytes (%.2fx), %d pages as references\n%+v",
			first.WireBytes, row.WireBytes, float64(row.WireBytes)/float64(first.WireBytes), row.KnownPages, row)
		// The guest changes a few MiB a minute of its 192 MiB; the
		// captures of this guest share 86-92 % of their pages.
		if row.KnownPages == 0 || row.WireBytes > first.WireBytes/2 {
			t.Fatalf("history did not pay: %d pages as references, %d link bytes against %d", row.KnownPages, row.WireBytes, first.WireBytes)
		}
	})
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
