package plugin_test

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
)

func buildFixture(t *testing.T, name string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	args := append(append([]string{"build", "-o", out}, flags...), "./testdata/"+name)
	if b, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, b)
	}
	return out
}

func TestHypervisorCallsCrossTheBoundary(t *testing.T) {
	bin := buildFixture(t, "testhv")
	ctx := context.Background()
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: bin})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	if d := inst.Description(); d.Kind != sdk.KindHypervisor || d.Name != "testhv" || inst.Protocol() != sdk.ProtocolVersion {
		t.Fatalf("description %+v protocol %d", d, inst.Protocol())
	}
	if _, err := inst.Codec(); !errors.Is(err, sdk.ErrUnsupported) {
		t.Fatalf("Codec() of a hypervisor plugin: %v", err)
	}
	h, err := inst.Hypervisor()
	if err != nil {
		t.Fatal(err)
	}
	caps, err := h.Capabilities(ctx)
	if err != nil || caps.Hypervisor != "testhv" || !caps.CanStartDestination || !reflect.DeepEqual(caps.MigrationCapabilities, []string{"return-path", "events"}) {
		t.Fatalf("capabilities %+v %v", caps, err)
	}
	vms, err := h.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].MemoryBytes != 256<<20 || string(vms[0].Config.Data) != "\x00\x01\x02\xff" {
		t.Fatalf("list %+v %v", vms, err)
	}
	params := hypervisor.Params{MaxBandwidth: 123456789, DowntimeLimit: 300 * time.Millisecond,
		Capabilities: []string{"return-path"}, Extra: map[string]string{"note": "hello"}}
	id, info, err := h.PrepareSource(ctx, vms[0].Ref, params)
	if err != nil || id == "" || info.Name != "vm1" {
		t.Fatalf("prepare source %q %+v %v", id, info, err)
	}
	st, err := h.QueryMigration(ctx, id)
	if err != nil || st.TotalBytes != 123456789 || st.Downtime != 300*time.Millisecond || st.Error != "hello" || st.Mbps != 12.5 {
		t.Fatalf("query %+v %v", st, err)
	}
	events, err := h.WatchMigration(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var passes []uint64
	for e := range events {
		if e.Type != hypervisor.EventPass || e.Status == nil || e.Status.TransferredBytes != e.Pass<<20 {
			t.Fatalf("event %+v", e)
		}
		passes = append(passes, e.Pass)
	}
	if !reflect.DeepEqual(passes, []uint64{1, 2, 3}) {
		t.Fatalf("passes %v", passes)
	}
	if _, err := h.FinishMigration(ctx, id, false); !errors.Is(err, sdk.ErrFailedPrecondition) {
		t.Fatalf("finish without resume: %v", err)
	}
	if st, err := h.FinishMigration(ctx, id, true); err != nil || st.State != "completed" || st.TotalTime != 1500*time.Millisecond {
		t.Fatalf("finish %+v %v", st, err)
	}
	_, ref, err := h.PrepareDestination(ctx, hypervisor.DestinationRequest{IncomingEndpoint: "/tmp/in.sock",
		Config: hypervisor.VMConfig{Hypervisor: "testhv", Data: []byte("cfg")}})
	if err != nil || ref.Address != "/run/testhv/cfg" {
		t.Fatalf("prepare destination %+v %v", ref, err)
	}
	if _, _, err := h.PrepareDestination(ctx, hypervisor.DestinationRequest{}); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("prepare destination without endpoint: %v", err)
	}
}

func TestHypervisorConformanceKitOnFixture(t *testing.T) {
	rep := conformance.CheckHypervisorBinary(context.Background(), buildFixture(t, "testhv"), conformance.HypervisorOptions{})
	if !rep.OK() {
		t.Fatalf("conformance:\n%s", rep.String())
	}
	passed, _, _ := rep.Counts()
	if passed < 10 {
		t.Fatalf("only %d checks passed:\n%s", passed, rep.String())
	}
}

// A plugin that implements PausedFinisher advertises it, and a paused
// finish crosses the boundary; one built without it (as against an older
// SDK) is refused in the host before any request that an old plugin would
// read as "discard the VM".
func TestFinishPausedCrossesTheBoundary(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		flags  []string
		paused bool
	}{
		{"current", nil, true},
		{"legacy", []string{"-ldflags", "-X main.legacy=1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: buildFixture(t, "testhv", tc.flags...)})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Close()
			h, err := inst.Hypervisor()
			if err != nil {
				t.Fatal(err)
			}
			can, err := hypervisor.CanFinishPaused(ctx, h)
			if err != nil || can != tc.paused {
				t.Fatalf("CanFinishPaused = %v, %v; want %v", can, err, tc.paused)
			}
			id, _, err := h.PrepareDestination(ctx, hypervisor.DestinationRequest{IncomingEndpoint: "/tmp/in.sock",
				Config: hypervisor.VMConfig{Hypervisor: "testhv", Data: []byte("cfg")}})
			if err != nil {
				t.Fatal(err)
			}
			pf := h.(hypervisor.PausedFinisher)
			st, err := pf.FinishMigrationPaused(ctx, id)
			if !tc.paused {
				if !errors.Is(err, sdk.ErrUnsupported) {
					t.Fatalf("paused finish on a plugin without it: %v, want sdk.ErrUnsupported", err)
				}
				// Nothing reached the plugin: the migration is still there.
				if _, err := h.QueryMigration(ctx, id); err != nil {
					t.Fatalf("the refused call touched the migration: %v", err)
				}
				return
			}
			if err != nil || st.State != "completed" || st.TotalTime != 2500*time.Millisecond {
				t.Fatalf("paused finish: %+v %v", st, err)
			}
			if _, err := h.QueryMigration(ctx, id); !errors.Is(err, sdk.ErrNotFound) {
				t.Fatalf("migration after a paused finish: %v, want forgotten", err)
			}
			if _, err := pf.FinishMigrationPaused(ctx, id); !errors.Is(err, sdk.ErrNotFound) {
				t.Fatalf("second paused finish: %v, want sdk.ErrNotFound", err)
			}
			src, _, err := h.PrepareSource(ctx, hypervisor.VMRef{Address: "/run/testhv/vm1.qmp"}, hypervisor.Params{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := pf.FinishMigrationPaused(ctx, src); !errors.Is(err, sdk.ErrFailedPrecondition) {
				t.Fatalf("paused finish of a source: %v, want sdk.ErrFailedPrecondition", err)
			}
		})
	}
}
