package qemudriver

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// TestDriverAttachMigrate migrates a QEMU without a machine (`-machine
// none`, running) to one the test started with `-incoming defer`: the
// driver's attach mode and its parameter handling, in process and in about
// a second, with no guest to boot.
func TestDriverAttachMigrate(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	src := startBare(t, mkdir(t, dir, "src"))
	dst := startQEMU(t, mkdir(t, dir, "dst"), "-machine", "none", "-nodefaults", "-display", "none", "-S", "-incoming", "defer")
	d := newTestDriver(t, Config{QEMU: qemuBin(), PollInterval: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A source must be running; -S left it in prelaunch.
	if err := d.withMonitor(ctx, src.qmp, func(mon *monitor) error { return mon.run(ctx, "cont", nil, nil) }); err != nil {
		t.Fatal(err)
	}
	// As if the VM had arrived by an earlier multifd migration, throttled:
	// DWCP must not inherit those (checkParams below wants them off).
	if err := d.withMonitor(ctx, src.qmp, func(mon *monitor) error {
		return mon.run(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []migrationCapability{
			{Capability: "multifd", State: true}, {Capability: "auto-converge", State: true}}}, nil)
	}); err != nil {
		t.Fatal(err)
	}

	in, out := filepath.Join(dir, "in.sock"), filepath.Join(dir, "out.sock")
	params := hypervisor.Params{
		MaxBandwidth: 1 << 30, DowntimeLimit: 122500 * time.Microsecond,
		Capabilities: []string{"xbzrle", "auto-converge=off"},
		Extra:        map[string]string{"multifd-channels": "3", "cpu-throttle-tailslow": "true"},
	}

	t.Run("refusals", func(t *testing.T) {
		for _, c := range []struct {
			p    hypervisor.Params
			want error
		}{
			{hypervisor.Params{Capabilities: []string{"no-such-capability"}}, sdk.ErrUnsupported},
			{hypervisor.Params{Capabilities: []string{"return-path=off"}}, sdk.ErrInvalidArgument},
			{hypervisor.Params{Capabilities: []string{"xbzrle=maybe"}}, sdk.ErrInvalidArgument},
			{hypervisor.Params{Extra: map[string]string{"no-such-parameter": "1"}}, sdk.ErrInvalidArgument},
			{hypervisor.Params{Extra: map[string]string{"multifd-channels": "-1"}}, sdk.ErrInvalidArgument},
			{hypervisor.Params{DowntimeLimit: time.Hour}, sdk.ErrInvalidArgument},
		} {
			_, _, err := d.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, c.p)
			if !errors.Is(err, c.want) {
				t.Errorf("PrepareSource(%+v) = %v; want %v", c.p, err, c.want)
			}
		}
		// A refused preparation lets go of the VM.
		if _, err := d.InspectVM(ctx, hypervisor.VMRef{Address: src.qmp}); err != nil {
			t.Error(err)
		}
	})

	dstID, dstRef, err := d.PrepareDestination(ctx, hypervisor.DestinationRequest{
		VM: hypervisor.VMRef{Address: dst.qmp}, IncomingEndpoint: in,
		Params: hypervisor.Params{Capabilities: []string{"xbzrle"}, Extra: map[string]string{"multifd-channels": "3"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if dstRef.Address != dst.qmp {
		t.Errorf("attached destination ref %q", dstRef.Address)
	}
	srcID, info, err := d.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, params)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != "running" || info.MachineType != "none" {
		t.Errorf("source info %+v", info)
	}
	if _, _, err := d.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, params); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Errorf("second PrepareSource on the same VM: %v", err)
	}

	checkParams := func(t *testing.T, path string, want map[string]any, caps ...string) {
		t.Helper()
		err := d.withMonitor(ctx, path, func(mon *monitor) error {
			var got map[string]any
			if err := mon.run(ctx, "query-migrate-parameters", nil, &got); err != nil {
				return err
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s: %s = %v, want %v", path, k, got[k], v)
				}
			}
			var have []migrationCapability
			if err := mon.run(ctx, "query-migrate-capabilities", nil, &have); err != nil {
				return err
			}
			for _, c := range have {
				if slices.Contains(caps, c.Capability) != c.State {
					t.Errorf("%s: capability %s is %v", path, c.Capability, c.State)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// JSON numbers decode as float64. 122.5 ms is rounded up to 123.
	checkParams(t, src.qmp, map[string]any{"max-bandwidth": float64(1 << 30), "downtime-limit": float64(123),
		"multifd-channels": float64(3), "cpu-throttle-tailslow": true}, "return-path", "events", "xbzrle")
	checkParams(t, dst.qmp, map[string]any{"multifd-channels": float64(3)}, "return-path", "events", "xbzrle")

	if err := d.SetLimits(ctx, srcID, hypervisor.Params{MaxBandwidth: 3 << 30, DowntimeLimit: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	checkParams(t, src.qmp, map[string]any{"max-bandwidth": float64(3 << 30), "downtime-limit": float64(50)}, "return-path", "events", "xbzrle")
	if err := d.SetLimits(ctx, dstID, hypervisor.Params{MaxBandwidth: 1}); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Errorf("SetLimits on a destination: %v", err)
	}
	if err := d.StartMigration(ctx, dstID, out); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Errorf("StartMigration on a destination: %v", err)
	}
	if _, err := d.FinishMigration(ctx, srcID, false); err != nil {
		t.Fatalf("finish of a source that never started: %v", err)
	}
	// Prepared again after the release, as a host retrying would.
	srcID, _, err = d.PrepareSource(ctx, hypervisor.VMRef{Address: src.qmp}, params)
	if err != nil {
		t.Fatal(err)
	}

	newRelay(t, out, in, false)
	events, err := d.WatchMigration(ctx, srcID)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.StartMigration(ctx, srcID, out); err != nil {
		t.Fatal(err)
	}
	if err := d.StartMigration(ctx, srcID, out); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Errorf("second StartMigration: %v", err)
	}
	var seen []string
	var last hypervisor.Status
	for e := range events {
		if e.Time.IsZero() {
			t.Error("event without a time")
		}
		if e.Type == hypervisor.EventStatus && e.State != "" && (len(seen) == 0 || seen[len(seen)-1] != e.State) {
			seen = append(seen, e.State)
		}
		if e.Status != nil {
			last = *e.Status
		}
	}
	if last.State != "completed" || !slices.Contains(seen, "completed") {
		t.Fatalf("watch ended with %+v after states %v", last, seen)
	}
	raw, _ := json.Marshal(last)
	t.Logf("states %v; final %s", seen, raw)

	st, err := d.FinishMigration(ctx, dstID, true)
	if err != nil || st.State != "completed" {
		t.Fatalf("finish destination: %+v, %v", st, err)
	}
	dinfo, err := d.InspectVM(ctx, dstRef)
	if err != nil || dinfo.State != "running" {
		t.Errorf("destination after finish: %+v, %v", dinfo, err)
	}
	if _, err := d.FinishMigration(ctx, srcID, false); err != nil {
		t.Fatal(err)
	}
	sinfo, err := d.InspectVM(ctx, hypervisor.VMRef{Address: src.qmp})
	if err != nil || sinfo.State != "postmigrate" {
		t.Errorf("source after migration: %+v, %v", sinfo, err)
	}
	if _, err := d.QueryMigration(ctx, srcID); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("a finished migration is still known: %v", err)
	}
}

func mkdir(t testing.TB, parent, name string) string {
	t.Helper()
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
