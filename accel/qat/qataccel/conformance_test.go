package qataccel

import (
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
)

func TestConformanceEmulated(t *testing.T) {
	conformance.TestAccelerator(t, New(Config{Emulate: true}), conformance.AccelOptions{
		CompressLevels: []int64{1, 6, 9},
		Goroutines:     4,
	})
}

// Without emulation the plugin lists nothing and refuses everything, which
// the suite accepts as a (useless but honest) accelerator.
func TestConformanceNotEmulated(t *testing.T) {
	conformance.TestAccelerator(t, New(Config{}), conformance.AccelOptions{Goroutines: 2})
}
