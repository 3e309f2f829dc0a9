// Package qataccel is the Intel QuickAssist (QAT) accelerator plugin's
// implementation, which in this build cannot offload anything: DWCP is
// built without a QAT user-space library (qatgo, QATzip), and the
// machines it is developed and tested on have no QAT device.
//
// It owns two honest things: a probe that looks for QAT devices on the PCI
// bus and reports what it saw as the plugin's health, and an explicitly
// EMULATED mode that performs deflate compression in software (Go's
// compress/flate), marked Emulated in its capabilities and named as a fake
// in its health, so that the host's accelerator plumbing can be exercised
// without hardware. It must never present software work as offload.
package qataccel

import (
	"fmt"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// EnvEmulate is the environment variable that turns on the emulated mode
// in the plugin binary when set to "1".
const EnvEmulate = "DWCP_QAT_EMULATE"

// CompressFormat is the emulated OpCompress output: raw deflate (RFC 1951),
// the format QAT's deflate service produces without a gzip or zlib frame.
const CompressFormat = "deflate"

// Compression levels accepted by OpCompress in emulated mode (deflate's).
const (
	MinLevel = 1
	MaxLevel = 9
)

// EmulatedFeature is the single feature an emulated instance reports: the
// software that does the work instead of a device.
const EmulatedFeature = "software:compress/flate"

// Config selects the mode.
type Config struct {
	// Emulate offers OpCompress/OpDecompress done in software.
	Emulate bool
	// Root is where the probe looks for /sys and /dev; "" means "/".
	Root string
}

// Accel implements accel.Accelerator and sdk.HealthChecker.
type Accel struct {
	emulate bool
	root    string
}

// New builds the accelerator; it never fails, because "no hardware" is a
// health verdict, not a construction error.
func New(cfg Config) *Accel {
	root := cfg.Root
	if root == "" {
		root = "/"
	}
	return &Accel{emulate: cfg.Emulate, root: root}
}

// Name is the plugin name for this mode: an emulated plugin is called so.
func (a *Accel) Name() string {
	if a.emulate {
		return "qat-emulated"
	}
	return "qat"
}

// Summary is the one-line plugin description for this mode.
func (a *Accel) Summary() string {
	if a.emulate {
		return "EMULATED — no QAT hardware: deflate done in software (Go compress/flate) standing in for Intel QAT offload"
	}
	return "Intel QAT offload — no QAT library in this build: probes for devices, offers no operations"
}

// Capabilities lists deflate only when emulating; without hardware and
// library there is nothing to offer.
func (a *Accel) Capabilities() accel.Capabilities {
	if !a.emulate {
		return accel.Capabilities{}
	}
	return accel.Capabilities{
		Ops:            []accel.Op{accel.OpCompress, accel.OpDecompress},
		Features:       []string{EmulatedFeature},
		Emulated:       true,
		CompressFormat: CompressFormat,
	}
}

// Health probes the system on every call (a few sysfs reads) so that the
// verdict follows hot-plug and driver loads.
func (a *Accel) Health() sdk.Health {
	p := ProbeSystem(a.root)
	if a.emulate {
		return sdk.Health{
			Status: sdk.Degraded,
			Detail: "EMULATED — no QAT hardware used: deflate runs in software on the CPU; probe: " + p.Summary() + "; no QAT library in this build",
		}
	}
	detail := p.Summary() + "; no QAT library in this build (needs qatgo + QATzip), so nothing can be offloaded"
	if !p.Found() {
		detail += "; set " + EnvEmulate + "=1 for the software stand-in"
	}
	return sdk.Health{Status: sdk.Unhealthy, Detail: detail}
}

// Run performs OpCompress (arg = level 1-9) and OpDecompress (arg = largest
// output accepted) in emulated mode; everything else is unsupported.
func (a *Accel) Run(dst []byte, op accel.Op, arg int64, in []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = dst, fmt.Errorf("qat %s: internal error: %v", op, r)
		}
	}()
	if !a.emulate {
		return dst, fmt.Errorf("qat %s: no QAT device or library in this build: %w", op, sdk.ErrUnsupported)
	}
	switch op {
	case accel.OpCompress:
		return deflate(dst, arg, in)
	case accel.OpDecompress:
		return inflate(dst, arg, in)
	}
	return dst, fmt.Errorf("qat-emulated %s: %w", op, sdk.ErrUnsupported)
}
