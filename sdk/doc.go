// Package sdk is what a third-party DWCP plugin author imports: the kinds of
// plugin, the protocol versions this SDK speaks, and the sentinel errors that
// survive the process boundary (errors.Is works in the host on an error a
// plugin returned).
//
// The plugin interfaces live in the codec, accel and hypervisor packages;
// plugin.Serve runs one of them as a plugin binary; conformance is the test
// kit an author runs in their own go test. Generated protocol stubs are
// internal and never part of the API.
//
// This module is separate from the DWCP host so that importing it pulls only
// go-plugin, gRPC and protobuf, never the host's dependency tree.
package sdk

// Version is the SDK's own release version, reported by every plugin built
// with it.
const Version = "0.1.0"

// ProtocolVersion is the plugin protocol major version this SDK speaks. It is
// the go-plugin handshake ProtocolVersion and the vN in proto/dwcp/plugin/vN.
const ProtocolVersion = 1

// Kind names what a plugin implements.
type Kind string

const (
	KindCodec       Kind = "codec"
	KindAccelerator Kind = "accelerator"
	KindHypervisor  Kind = "hypervisor"
)

// Description is the cheap first stage of a fingerprint: what a plugin is,
// without any capability probing. `PLUGIN describe` prints it as JSON
// without starting RPC, and the PluginInfo service returns it too.
type Description struct {
	Kind             Kind   `json:"kind"`
	Name             string `json:"name"`
	Version          string `json:"version"`
	ProtocolVersions []int  `json:"protocol_versions"`
	SDKVersion       string `json:"sdk_version"`
	Summary          string `json:"summary,omitempty"`
}

// Health is a plugin's own verdict on whether it can do its work now.
type Health struct {
	Status HealthStatus
	Detail string
}

// HealthStatus orders plugin health from good to bad.
type HealthStatus int

const (
	HealthUnknown HealthStatus = iota
	Healthy
	Degraded
	Unhealthy
)

func (s HealthStatus) String() string {
	switch s {
	case Healthy:
		return "healthy"
	case Degraded:
		return "degraded"
	case Unhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// HealthChecker is an optional interface: a plugin that implements it reports
// its own health in the fingerprint; others are reported healthy while they
// answer.
type HealthChecker interface {
	Health() Health
}
