package qemudriver

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// TestFinishMigrationPaused ends attach-mode migrations of `-machine none`
// QEMUs without running the destination: a destination started with -S is
// left paused and released; one started without -S already runs when the
// stream completed, and the driver says so instead of reporting it paused.
func TestFinishMigrationPaused(t *testing.T) {
	requireQEMU(t)
	d := newTestDriver(t, Config{QEMU: qemuBin(), PollInterval: 100 * time.Millisecond})
	var _ hypervisor.PausedFinisher = d
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if caps, err := d.Capabilities(ctx); err != nil || !caps.FinishPaused {
		t.Fatalf("capabilities %+v, %v: want FinishPaused", caps, err)
	}
	if _, err := d.FinishMigrationPaused(ctx, "dst-nosuch"); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("unknown migration: %v", err)
	}

	// migrate runs one migration into a destination started with dstArgs
	// and returns both ids once the source completed.
	migrate := func(t *testing.T, dstArgs ...string) (string, string, *proc) {
		dir := shortDir(t)
		src := startBare(t, mkdir(t, dir, "src"))
		dst := startQEMU(t, mkdir(t, dir, "dst"), append([]string{"-machine", "none", "-nodefaults", "-display", "none", "-incoming", "defer"}, dstArgs...)...)
		if err := d.withMonitor(ctx, src.qmp, func(mon *monitor) error { return mon.run(ctx, "cont", nil, nil) }); err != nil {
			t.Fatal(err)
		}
		in, out := filepath.Join(dir, "in.sock"), filepath.Join(dir, "out.sock")
		dstID, _, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{VM: hypervisor.VMRef{Address: dst.qmp}, IncomingEndpoint: in})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.FinishMigrationPaused(ctx, dstID); !errors.Is(err, sdk.ErrFailedPrecondition) {
			t.Errorf("paused finish before any stream: %v, want sdk.ErrFailedPrecondition", err)
		}
		srcID, _, err := d.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, hypervisor.Params{})
		if err != nil {
			t.Fatal(err)
		}
		newRelay(t, out, in, false)
		if err := d.StartMigration(ctx, srcID, out); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		defer wcancel()
		for {
			st, err := d.QueryMigration(wctx, srcID)
			if err != nil {
				t.Fatal(err)
			}
			if finalState(st.State) {
				if st.State != stateCompleted {
					t.Fatalf("source migration ended %s: %s", st.State, st.Error)
				}
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := d.FinishMigrationPaused(ctx, srcID); !errors.Is(err, sdk.ErrFailedPrecondition) {
			t.Errorf("paused finish of the source side: %v, want sdk.ErrFailedPrecondition", err)
		}
		if _, err := d.FinishMigration(ctx, srcID, false); err != nil {
			t.Fatalf("finish source: %v", err)
		}
		return srcID, dstID, dst
	}

	t.Run("started with -S: left paused", func(t *testing.T) {
		_, dstID, dst := migrate(t, "-S")
		st, err := d.FinishMigrationPaused(ctx, dstID)
		if err != nil || st.State != stateCompleted {
			t.Fatalf("paused finish: %+v, %v", st, err)
		}
		info, err := d.InspectVM(ctx, hypervisor.VMRef{Address: dst.qmp})
		if err != nil || info.State != "paused" {
			t.Fatalf("destination after a paused finish: %+v, %v; want paused", info, err)
		}
		if _, err := d.QueryMigration(ctx, dstID); !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("a finished migration is still known: %v", err)
		}
		// Released: the operator (here the test) continues it.
		if err := d.withMonitor(ctx, dst.qmp, func(mon *monitor) error { return mon.run(ctx, "cont", nil, nil) }); err != nil {
			t.Fatal(err)
		}
		if info, err := d.InspectVM(ctx, hypervisor.VMRef{Address: dst.qmp}); err != nil || info.State != "running" {
			t.Fatalf("destination after cont: %+v, %v", info, err)
		}
	})

	t.Run("started without -S: refused, not reported paused", func(t *testing.T) {
		_, dstID, _ := migrate(t)
		_, err := d.FinishMigrationPaused(ctx, dstID)
		if !errors.Is(err, sdk.ErrFailedPrecondition) {
			t.Fatalf("paused finish of a VM that runs: %v, want sdk.ErrFailedPrecondition", err)
		}
		t.Logf("refused: %v", err)
		// The host then discards it; an attached VM is the operator's.
		if err := d.CancelMigration(ctx, dstID); err != nil {
			t.Fatal(err)
		}
	})
}
