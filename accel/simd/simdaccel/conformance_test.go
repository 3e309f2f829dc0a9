package simdaccel

import (
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
)

// Every path this CPU can run passes the SDK's accelerator conformance
// suite, including the XXH3-128 known answers.
func TestConformance(t *testing.T) {
	for name, a := range variants(t) {
		t.Run(name, func(t *testing.T) {
			conformance.TestAccelerator(t, a, conformance.AccelOptions{
				CompressLevels: []int64{LevelFast, LevelBetter, LevelBest},
				Goroutines:     4,
			})
		})
	}
}
