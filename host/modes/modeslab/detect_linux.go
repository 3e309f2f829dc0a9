//go:build linux

package modeslab

import (
	"context"
	"fmt"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Detection is one probe's result next to what the link's settings say.
type Detection struct {
	Probe modes.ProbeResult
	// Mode is the probe's path classified with the thresholds.
	Mode modes.Mode
	// Link is the h0->h1 direction's settings when the probe started;
	// Changed reports that they were different when it ended (a profile's
	// schedule stepped during the probe).
	Link    wanlab.LinkParams
	Changed bool
	// Expected is the class of the settings' path (SettingsPath).
	Expected modes.Mode
}

// Detect opens a session, probes the path as a session start does, and
// classifies it with t (zero: the defaults).
func Detect(ctx context.Context, lab *wanlab.Lab, opts SessionOptions, t modes.Thresholds) (Detection, error) {
	var d Detection
	p, err := OpenSessions(ctx, lab, opts)
	if err != nil {
		return d, fmt.Errorf("detect: %w", err)
	}
	defer p.Close()
	h0, h1 := lab.Host(0), lab.Host(1)
	if d.Link, err = lab.Link(h0, h1); err != nil {
		return d, fmt.Errorf("detect: %w", err)
	}
	d.Probe, err = p.Probe(ctx, modes.ProbeConfig{})
	if err != nil {
		return d, fmt.Errorf("detect: %w", err)
	}
	end, err := lab.Link(h0, h1)
	if err != nil {
		return d, fmt.Errorf("detect: %w", err)
	}
	d.Changed = end != d.Link
	d.Mode = modes.Classify(d.Probe.Path, t)
	d.Expected = modes.Classify(SettingsPath(d.Link, lab.MTU()), t)
	return d, nil
}
