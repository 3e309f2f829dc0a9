// Package hypervisor defines the interface of a DWCP hypervisor plugin: the
// driver that tells a hypervisor (QEMU over QMP, libvirt) to migrate into or
// out of an endpoint the DWCP host owns, and reports what happens.
//
// A hypervisor plugin never touches the migration stream itself. This
// package owns the contract only.
package hypervisor

import (
	"context"
	"fmt"
	"time"
)

// Hypervisor is implemented by a hypervisor plugin. Every method may block
// on the hypervisor and takes a context. Errors wrap the sdk sentinels:
// sdk.ErrNotFound for an unknown VM or migration, sdk.ErrUnavailable when the
// hypervisor cannot be reached, sdk.ErrFailedPrecondition for a VM in the
// wrong state, sdk.ErrUnsupported for an optional feature it lacks.
type Hypervisor interface {
	Capabilities(ctx context.Context) (Capabilities, error)
	ListVMs(ctx context.Context) ([]VMInfo, error)
	InspectVM(ctx context.Context, vm VMRef) (VMInfo, error)

	// PrepareSource readies a running VM for an outgoing migration with the
	// given parameters and returns the migration's id.
	PrepareSource(ctx context.Context, vm VMRef, p Params) (string, VMInfo, error)
	// PrepareDestination attaches to a VM waiting for an incoming migration
	// (req.VM) or starts one from req.Config, and has it read its stream
	// from req.IncomingEndpoint.
	PrepareDestination(ctx context.Context, req DestinationRequest) (string, VMRef, error)
	// StartMigration makes the source write its stream to endpoint.
	StartMigration(ctx context.Context, id, endpoint string) error
	// WatchMigration sends events until the migration ends or ctx is done,
	// then closes the channel. The plugin must not block forever on a
	// receiver that stopped reading once ctx is done.
	WatchMigration(ctx context.Context, id string) (<-chan Event, error)
	QueryMigration(ctx context.Context, id string) (Status, error)
	// SetLimits changes bandwidth and downtime limits while migrating.
	SetLimits(ctx context.Context, id string, p Params) error
	// CancelMigration stops a migration; on the source the VM keeps running.
	CancelMigration(ctx context.Context, id string) error
	// FinishMigration ends a migration: resume=true on the destination runs
	// the VM; on the source it releases what PrepareSource took.
	FinishMigration(ctx context.Context, id string, resume bool) (Status, error)
}

// Capabilities fingerprints the hypervisor the plugin drives.
type Capabilities struct {
	Hypervisor            string
	Version               string
	MachineTypes          []string
	MigrationCapabilities []string
	MigrationParameters   []string
	CanStartDestination   bool
	// FinishPaused: the plugin can end an incoming migration with the VM
	// loaded and paused (it implements PausedFinisher). The SDK's plugin
	// server sets it from the implementation, whatever Capabilities says;
	// an in-process implementation sets it itself.
	FinishPaused bool
}

// PausedFinisher is an optional interface of a Hypervisor: ending a
// completed incoming migration with the VM loaded but not running, for an
// operator who resumes it later (`dwcp migrate --suspend`, as `virsh
// migrate --suspend`) or a check of its memory before it runs. A separate
// interface, so that plugins built against an SDK without it still
// compile and are known not to have it.
type PausedFinisher interface {
	// FinishMigrationPaused ends the destination side of migration id once
	// it completed, leaving the VM paused, and releases it like
	// FinishMigration does. It must never run the VM: when the VM cannot
	// be left paused (it already runs, the migration did not complete) it
	// fails with sdk.ErrFailedPrecondition.
	FinishMigrationPaused(ctx context.Context, id string) (Status, error)
}

// CanFinishPaused reports whether h can end an incoming migration paused:
// it implements PausedFinisher and its capabilities say so (a plugin
// client always has the method; the capability tells whether the plugin
// behind it does).
func CanFinishPaused(ctx context.Context, h Hypervisor) (bool, error) {
	if _, ok := h.(PausedFinisher); !ok {
		return false, nil
	}
	caps, err := h.Capabilities(ctx)
	if err != nil {
		return false, fmt.Errorf("hypervisor capabilities: %w", err)
	}
	return caps.FinishPaused, nil
}

// VMRef names a VM: a QMP socket path, a libvirt domain, as the plugin
// documents.
type VMRef struct {
	Address string
}

// VMInfo describes a VM.
type VMInfo struct {
	Ref         VMRef
	Name        string
	State       string
	MemoryBytes uint64
	MachineType string
	Config      VMConfig
}

// VMConfig is what a destination needs to start an identical VM; its Data is
// opaque to the host and meaningful to the plugin named by Hypervisor.
type VMConfig struct {
	Hypervisor string
	Data       []byte
}

// Params are the migration parameters the host sets. Zero means "leave the
// hypervisor's value".
type Params struct {
	MaxBandwidth             uint64 // bytes/s
	DowntimeLimit            time.Duration
	AvailSwitchoverBandwidth uint64 // bytes/s
	Capabilities             []string
	Extra                    map[string]string
}

// DestinationRequest is the input of PrepareDestination.
type DestinationRequest struct {
	VM               VMRef
	Config           VMConfig
	IncomingEndpoint string
	Params           Params
}

// Status is a snapshot of a migration as the hypervisor reports it.
type Status struct {
	State              string
	TotalTime          time.Duration
	Downtime           time.Duration
	ExpectedDowntime   time.Duration
	SetupTime          time.Duration
	TransferredBytes   uint64
	RemainingBytes     uint64
	TotalBytes         uint64
	DuplicatePages     uint64
	NormalPages        uint64
	DirtyPagesRate     uint64
	DirtySyncCount     uint64
	Mbps               float64
	CPUThrottlePercent uint32
	Error              string
}

// EventType classifies an Event.
type EventType string

const (
	EventStatus EventType = "status"
	EventPass   EventType = "pass"
	EventLog    EventType = "log"
	// EventStopped: the VM stopped running during the migration (the
	// stop-and-copy phase began). Time is the hypervisor's own timestamp:
	// the hypervisor may be too busy to answer queries at that moment, so
	// the event carries no Status.
	EventStopped EventType = "stopped"
)

// Event is one observation of a migration.
type Event struct {
	Time    time.Time
	Type    EventType
	State   string
	Pass    uint64
	Message string
	Status  *Status
}
