package conformance

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// vagueHypervisor breaks the contract: it answers every unknown object with
// an error the host cannot classify, and panics on Cancel.
type vagueHypervisor struct{}

var errVague = errors.New("something went wrong")

func (vagueHypervisor) Capabilities(context.Context) (hypervisor.Capabilities, error) {
	return hypervisor.Capabilities{}, nil
}
func (vagueHypervisor) ListVMs(context.Context) ([]hypervisor.VMInfo, error) {
	return []hypervisor.VMInfo{{Name: "no address"}}, nil
}
func (vagueHypervisor) InspectVM(context.Context, hypervisor.VMRef) (hypervisor.VMInfo, error) {
	return hypervisor.VMInfo{}, errVague
}
func (vagueHypervisor) PrepareSource(context.Context, hypervisor.VMRef, hypervisor.Params) (string, hypervisor.VMInfo, error) {
	return "x", hypervisor.VMInfo{}, nil
}
func (vagueHypervisor) PrepareDestination(context.Context, hypervisor.DestinationRequest) (string, hypervisor.VMRef, error) {
	return "", hypervisor.VMRef{}, errVague
}
func (vagueHypervisor) StartMigration(context.Context, string, string) error { return errVague }
func (vagueHypervisor) WatchMigration(context.Context, string) (<-chan hypervisor.Event, error) {
	ch := make(chan hypervisor.Event)
	close(ch)
	return ch, nil
}
func (vagueHypervisor) QueryMigration(context.Context, string) (hypervisor.Status, error) {
	return hypervisor.Status{}, errVague
}
func (vagueHypervisor) SetLimits(context.Context, string, hypervisor.Params) error { return errVague }
func (vagueHypervisor) CancelMigration(context.Context, string) error {
	panic("cancel exploded")
}
func (vagueHypervisor) FinishMigration(context.Context, string, bool) (hypervisor.Status, error) {
	return hypervisor.Status{}, errVague
}

func TestHypervisorKitCatchesContractBreaches(t *testing.T) {
	rep := CheckHypervisor(context.Background(), vagueHypervisor{}, HypervisorOptions{})
	if rep.OK() {
		t.Fatalf("a contract-breaking hypervisor passed:\n%s", rep.String())
	}
	failed := map[string]string{}
	for _, r := range rep.Failures() {
		failed[r.Name] = r.Message
	}
	for _, name := range []string{"capabilities", "list", "not-found/inspect", "not-found/prepare-source",
		"not-found/query", "not-found/cancel", "not-found/watch"} {
		if _, ok := failed[name]; !ok {
			t.Errorf("check %s did not fail; failures: %v", name, failed)
		}
	}
	if !strings.Contains(failed["not-found/cancel"], "cancel exploded") {
		t.Errorf("panic not reported: %q", failed["not-found/cancel"])
	}
}

// pausingVague offers FinishMigrationPaused and answers it vaguely.
type pausingVague struct{ vagueHypervisor }

func (pausingVague) Capabilities(context.Context) (hypervisor.Capabilities, error) {
	return hypervisor.Capabilities{Hypervisor: "vague", FinishPaused: true}, nil
}

func (pausingVague) FinishMigrationPaused(context.Context, string) (hypervisor.Status, error) {
	return hypervisor.Status{}, errVague
}

func TestHypervisorKitChecksFinishPaused(t *testing.T) {
	status := func(h hypervisor.Hypervisor) Status {
		for _, r := range CheckHypervisor(context.Background(), h, HypervisorOptions{}).Results {
			if r.Name == "not-found/finish-paused" {
				return r.Status
			}
		}
		t.Fatal("no not-found/finish-paused check")
		return StatusPass
	}
	if got := status(pausingVague{}); got != StatusFail {
		t.Errorf("a vague FinishMigrationPaused: %s, want %s", got, StatusFail)
	}
	if got := status(vagueHypervisor{}); got != StatusSkip {
		t.Errorf("a hypervisor without FinishMigrationPaused: %s, want %s", got, StatusSkip)
	}
}
