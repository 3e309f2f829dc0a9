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

func buildFixture(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	if b, err := exec.Command("go", "build", "-o", out, "./testdata/"+name).CombinedOutput(); err != nil {
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
