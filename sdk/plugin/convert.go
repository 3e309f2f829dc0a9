package plugin

import (
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
)

// This file translates between the hand-written SDK types and the generated
// protobuf types, in both directions. Nothing else in the SDK touches pb
// message fields.

func kindToPB(k sdk.Kind) pb.Kind {
	switch k {
	case sdk.KindCodec:
		return pb.Kind_KIND_CODEC
	case sdk.KindAccelerator:
		return pb.Kind_KIND_ACCELERATOR
	case sdk.KindHypervisor:
		return pb.Kind_KIND_HYPERVISOR
	}
	return pb.Kind_KIND_UNSPECIFIED
}

func kindFromPB(k pb.Kind) sdk.Kind {
	switch k {
	case pb.Kind_KIND_CODEC:
		return sdk.KindCodec
	case pb.Kind_KIND_ACCELERATOR:
		return sdk.KindAccelerator
	case pb.Kind_KIND_HYPERVISOR:
		return sdk.KindHypervisor
	}
	return ""
}

func healthToPB(s sdk.HealthStatus) pb.Health {
	switch s {
	case sdk.Healthy:
		return pb.Health_HEALTH_HEALTHY
	case sdk.Degraded:
		return pb.Health_HEALTH_DEGRADED
	case sdk.Unhealthy:
		return pb.Health_HEALTH_UNHEALTHY
	}
	return pb.Health_HEALTH_UNSPECIFIED
}

func healthFromPB(h pb.Health) sdk.HealthStatus {
	switch h {
	case pb.Health_HEALTH_HEALTHY:
		return sdk.Healthy
	case pb.Health_HEALTH_DEGRADED:
		return sdk.Degraded
	case pb.Health_HEALTH_UNHEALTHY:
		return sdk.Unhealthy
	}
	return sdk.HealthUnknown
}

func codecCapsToPB(c codec.Capabilities) *pb.CodecCapabilities {
	return &pb.CodecCapabilities{
		Algorithm:     c.Algorithm,
		Levels:        &pb.LevelRange{Min: int32(c.Levels.Min), Max: int32(c.Levels.Max), Default: int32(c.Levels.Default)},
		TierLocal:     int32(c.Tiers[codec.TierLocal]),
		TierRegional:  int32(c.Tiers[codec.TierRegional]),
		TierGlobal:    int32(c.Tiers[codec.TierGlobal]),
		Deterministic: c.Deterministic,
		BoundNum:      c.Bound.Num,
		BoundDen:      c.Bound.Den,
		BoundAdd:      c.Bound.Add,
		Features:      c.Features,
	}
}

func codecCapsFromPB(p *pb.CodecCapabilities) codec.Capabilities {
	c := codec.Capabilities{
		Algorithm:     p.GetAlgorithm(),
		Deterministic: p.GetDeterministic(),
		Bound:         codec.Bound{Num: p.GetBoundNum(), Den: p.GetBoundDen(), Add: p.GetBoundAdd()},
		Features:      p.GetFeatures(),
	}
	if l := p.GetLevels(); l != nil {
		c.Levels = codec.LevelRange{Min: int(l.Min), Max: int(l.Max), Default: int(l.Default)}
	}
	c.Tiers = [3]int{int(p.GetTierLocal()), int(p.GetTierRegional()), int(p.GetTierGlobal())}
	return c
}

func accelCapsToPB(c accel.Capabilities) *pb.AccelCapabilities {
	ops := make([]pb.AccelOp, len(c.Ops))
	for i, o := range c.Ops {
		ops[i] = pb.AccelOp(o)
	}
	return &pb.AccelCapabilities{Ops: ops, Features: c.Features, Emulated: c.Emulated, CompressFormat: c.CompressFormat}
}

func accelCapsFromPB(p *pb.AccelCapabilities) accel.Capabilities {
	ops := make([]accel.Op, len(p.GetOps()))
	for i, o := range p.GetOps() {
		ops[i] = accel.Op(o)
	}
	return accel.Capabilities{Ops: ops, Features: p.GetFeatures(), Emulated: p.GetEmulated(), CompressFormat: p.GetCompressFormat()}
}

func hvCapsToPB(c hypervisor.Capabilities) *pb.HypervisorCapabilities {
	return &pb.HypervisorCapabilities{
		Hypervisor:            c.Hypervisor,
		Version:               c.Version,
		MachineTypes:          c.MachineTypes,
		MigrationCapabilities: c.MigrationCapabilities,
		MigrationParameters:   c.MigrationParameters,
		CanStartDestination:   c.CanStartDestination,
		CanFinishPaused:       c.FinishPaused,
	}
}

func hvCapsFromPB(p *pb.HypervisorCapabilities) hypervisor.Capabilities {
	return hypervisor.Capabilities{
		Hypervisor:            p.GetHypervisor(),
		Version:               p.GetVersion(),
		MachineTypes:          p.GetMachineTypes(),
		MigrationCapabilities: p.GetMigrationCapabilities(),
		MigrationParameters:   p.GetMigrationParameters(),
		CanStartDestination:   p.GetCanStartDestination(),
		FinishPaused:          p.GetCanFinishPaused(),
	}
}

func vmRefToPB(r hypervisor.VMRef) *pb.VMRef { return &pb.VMRef{Address: r.Address} }

func vmRefFromPB(p *pb.VMRef) hypervisor.VMRef { return hypervisor.VMRef{Address: p.GetAddress()} }

func vmConfigToPB(c hypervisor.VMConfig) *pb.VMConfig {
	return &pb.VMConfig{Hypervisor: c.Hypervisor, Data: c.Data}
}

func vmConfigFromPB(p *pb.VMConfig) hypervisor.VMConfig {
	return hypervisor.VMConfig{Hypervisor: p.GetHypervisor(), Data: p.GetData()}
}

func vmInfoToPB(v hypervisor.VMInfo) *pb.VMInfo {
	return &pb.VMInfo{
		Ref:         vmRefToPB(v.Ref),
		Name:        v.Name,
		State:       v.State,
		MemoryBytes: v.MemoryBytes,
		MachineType: v.MachineType,
		Config:      vmConfigToPB(v.Config),
	}
}

func vmInfoFromPB(p *pb.VMInfo) hypervisor.VMInfo {
	return hypervisor.VMInfo{
		Ref:         vmRefFromPB(p.GetRef()),
		Name:        p.GetName(),
		State:       p.GetState(),
		MemoryBytes: p.GetMemoryBytes(),
		MachineType: p.GetMachineType(),
		Config:      vmConfigFromPB(p.GetConfig()),
	}
}

func paramsToPB(p hypervisor.Params) *pb.MigrationParams {
	return &pb.MigrationParams{
		MaxBandwidthBytesPerSec:             p.MaxBandwidth,
		DowntimeLimitMs:                     uint64(p.DowntimeLimit / time.Millisecond),
		AvailSwitchoverBandwidthBytesPerSec: p.AvailSwitchoverBandwidth,
		Capabilities:                        p.Capabilities,
		Extra:                               p.Extra,
	}
}

func paramsFromPB(p *pb.MigrationParams) hypervisor.Params {
	return hypervisor.Params{
		MaxBandwidth:             p.GetMaxBandwidthBytesPerSec(),
		DowntimeLimit:            time.Duration(p.GetDowntimeLimitMs()) * time.Millisecond,
		AvailSwitchoverBandwidth: p.GetAvailSwitchoverBandwidthBytesPerSec(),
		Capabilities:             p.GetCapabilities(),
		Extra:                    p.GetExtra(),
	}
}

func ms(d time.Duration) uint64 { return uint64(d / time.Millisecond) }

func fromMS(v uint64) time.Duration { return time.Duration(v) * time.Millisecond }

func statusToPB(s hypervisor.Status) *pb.MigrationStatus {
	return &pb.MigrationStatus{
		State:                 s.State,
		TotalTimeMs:           ms(s.TotalTime),
		DowntimeMs:            ms(s.Downtime),
		ExpectedDowntimeMs:    ms(s.ExpectedDowntime),
		SetupTimeMs:           ms(s.SetupTime),
		TransferredBytes:      s.TransferredBytes,
		RemainingBytes:        s.RemainingBytes,
		TotalBytes:            s.TotalBytes,
		DuplicatePages:        s.DuplicatePages,
		NormalPages:           s.NormalPages,
		DirtyPagesRate:        s.DirtyPagesRate,
		DirtySyncCount:        s.DirtySyncCount,
		Mbps:                  s.Mbps,
		CpuThrottlePercentage: s.CPUThrottlePercent,
		Error:                 s.Error,
	}
}

func statusFromPB(p *pb.MigrationStatus) hypervisor.Status {
	return hypervisor.Status{
		State:              p.GetState(),
		TotalTime:          fromMS(p.GetTotalTimeMs()),
		Downtime:           fromMS(p.GetDowntimeMs()),
		ExpectedDowntime:   fromMS(p.GetExpectedDowntimeMs()),
		SetupTime:          fromMS(p.GetSetupTimeMs()),
		TransferredBytes:   p.GetTransferredBytes(),
		RemainingBytes:     p.GetRemainingBytes(),
		TotalBytes:         p.GetTotalBytes(),
		DuplicatePages:     p.GetDuplicatePages(),
		NormalPages:        p.GetNormalPages(),
		DirtyPagesRate:     p.GetDirtyPagesRate(),
		DirtySyncCount:     p.GetDirtySyncCount(),
		Mbps:               p.GetMbps(),
		CPUThrottlePercent: p.GetCpuThrottlePercentage(),
		Error:              p.GetError(),
	}
}

func eventToPB(e hypervisor.Event) *pb.MigrationEvent {
	out := &pb.MigrationEvent{
		UnixNano: e.Time.UnixNano(),
		Type:     string(e.Type),
		State:    e.State,
		Pass:     e.Pass,
		Message:  e.Message,
	}
	if e.Status != nil {
		out.Status = statusToPB(*e.Status)
	}
	return out
}

func eventFromPB(p *pb.MigrationEvent) hypervisor.Event {
	e := hypervisor.Event{
		Time:    time.Unix(0, p.GetUnixNano()),
		Type:    hypervisor.EventType(p.GetType()),
		State:   p.GetState(),
		Pass:    p.GetPass(),
		Message: p.GetMessage(),
	}
	if p.Status != nil {
		s := statusFromPB(p.Status)
		e.Status = &s
	}
	return e
}
