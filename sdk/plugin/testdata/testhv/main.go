// Command testhv is a protocol fixture for sdk/plugin's tests: a hypervisor
// plugin that drives no hypervisor. It holds one pretend VM and records
// what it was asked, so the tests can check that every field crosses the
// plugin boundary intact. It is built by the tests and never shipped.
package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
)

const vmAddr = "/run/testhv/vm1.qmp"

type fixture struct {
	mu         sync.Mutex
	migrations map[string]hypervisor.Params
}

func (f *fixture) Capabilities(context.Context) (hypervisor.Capabilities, error) {
	return hypervisor.Capabilities{
		Hypervisor: "testhv", Version: "1.2.3",
		MachineTypes:          []string{"pc-q35-7.2"},
		MigrationCapabilities: []string{"return-path", "events"},
		MigrationParameters:   []string{"max-bandwidth"},
		CanStartDestination:   true,
	}, nil
}

func vm() hypervisor.VMInfo {
	return hypervisor.VMInfo{
		Ref: hypervisor.VMRef{Address: vmAddr}, Name: "vm1", State: "running",
		MemoryBytes: 256 << 20, MachineType: "pc-q35-7.2",
		Config: hypervisor.VMConfig{Hypervisor: "testhv", Data: []byte{0, 1, 2, 255}},
	}
}

func (f *fixture) ListVMs(context.Context) ([]hypervisor.VMInfo, error) {
	return []hypervisor.VMInfo{vm()}, nil
}

func (f *fixture) InspectVM(_ context.Context, ref hypervisor.VMRef) (hypervisor.VMInfo, error) {
	if ref.Address != vmAddr {
		return hypervisor.VMInfo{}, fmt.Errorf("vm %s: %w", ref.Address, sdk.ErrNotFound)
	}
	return vm(), nil
}

func (f *fixture) PrepareSource(_ context.Context, ref hypervisor.VMRef, p hypervisor.Params) (string, hypervisor.VMInfo, error) {
	if ref.Address != vmAddr {
		return "", hypervisor.VMInfo{}, fmt.Errorf("vm %s: %w", ref.Address, sdk.ErrNotFound)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := fmt.Sprintf("mig-%d", len(f.migrations)+1)
	f.migrations[id] = p
	return id, vm(), nil
}

func (f *fixture) PrepareDestination(_ context.Context, req hypervisor.DestinationRequest) (string, hypervisor.VMRef, error) {
	if req.IncomingEndpoint == "" {
		return "", hypervisor.VMRef{}, fmt.Errorf("no incoming endpoint: %w", sdk.ErrInvalidArgument)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := "dst-" + req.IncomingEndpoint
	f.migrations[id] = req.Params
	return id, hypervisor.VMRef{Address: "/run/testhv/" + string(req.Config.Data)}, nil
}

func (f *fixture) known(id string) (hypervisor.Params, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.migrations[id]
	if !ok {
		return p, fmt.Errorf("migration %q: %w", id, sdk.ErrNotFound)
	}
	return p, nil
}

func (f *fixture) StartMigration(_ context.Context, id, endpoint string) error {
	_, err := f.known(id)
	return err
}

func (f *fixture) WatchMigration(ctx context.Context, id string) (<-chan hypervisor.Event, error) {
	if _, err := f.known(id); err != nil {
		return nil, err
	}
	out := make(chan hypervisor.Event)
	go func() {
		defer close(out)
		for pass := uint64(1); pass <= 3; pass++ {
			e := hypervisor.Event{Time: time.Unix(1700000000, int64(pass)), Type: hypervisor.EventPass, Pass: pass,
				Status: &hypervisor.Status{State: "active", TransferredBytes: pass << 20}}
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func (f *fixture) QueryMigration(_ context.Context, id string) (hypervisor.Status, error) {
	p, err := f.known(id)
	if err != nil {
		return hypervisor.Status{}, err
	}
	// Echo the parameters back so the test sees they crossed intact.
	return hypervisor.Status{State: "active", TotalBytes: p.MaxBandwidth, Downtime: p.DowntimeLimit,
		Mbps: 12.5, Error: p.Extra["note"]}, nil
}

func (f *fixture) SetLimits(_ context.Context, id string, p hypervisor.Params) error {
	if _, err := f.known(id); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.migrations[id] = p
	return nil
}

func (f *fixture) CancelMigration(_ context.Context, id string) error {
	_, err := f.known(id)
	return err
}

func (f *fixture) FinishMigration(_ context.Context, id string, resume bool) (hypervisor.Status, error) {
	if _, err := f.known(id); err != nil {
		return hypervisor.Status{}, err
	}
	if !resume {
		return hypervisor.Status{}, fmt.Errorf("finish %s without resume: %w", id, sdk.ErrFailedPrecondition)
	}
	return hypervisor.Status{State: "completed", TotalTime: 1500 * time.Millisecond}, nil
}

// FinishMigrationPaused ends a destination migration ("dst-" ids) and
// forgets it, as a driver that leaves its VM paused would.
func (f *fixture) FinishMigrationPaused(_ context.Context, id string) (hypervisor.Status, error) {
	if _, err := f.known(id); err != nil {
		return hypervisor.Status{}, err
	}
	if !strings.HasPrefix(id, "dst-") {
		return hypervisor.Status{}, fmt.Errorf("finish %s paused: not a destination: %w", id, sdk.ErrFailedPrecondition)
	}
	f.mu.Lock()
	delete(f.migrations, id)
	f.mu.Unlock()
	return hypervisor.Status{State: "completed", TotalTime: 2500 * time.Millisecond}, nil
}

// legacy, set with -ldflags "-X main.legacy=1", builds the fixture as a
// plugin written before PausedFinisher existed: the interface value hides
// the method.
var legacy string

type legacyFixture struct{ hypervisor.Hypervisor }

func main() {
	var hv hypervisor.Hypervisor = &fixture{migrations: map[string]hypervisor.Params{}}
	if legacy != "" {
		hv = legacyFixture{hv}
	}
	plugin.Serve(plugin.ServeConfig{
		Name: "testhv", Version: "0.0.1", Summary: "protocol fixture, drives no hypervisor",
		Hypervisor: hv,
	})
}
