package modeslab

import (
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/wanlab"
)

// headerBytes is what each packet of a TCP stream spends on headers: IPv4
// (20), TCP (20) and its timestamp option (12). The lab's rates count IP
// packets, a path's bandwidth counts payload.
const headerBytes = 52

// SettingsPath is the path a link's settings describe, as host/modes
// measures paths: RTT twice the one-way delay, bandwidth the payload bytes
// per second of TCP segments filling packets of the lab's MTU, loss the
// per-direction loss. An unlimited rate gives bandwidth 0 (unknown).
func SettingsPath(lp wanlab.LinkParams, mtu int) modes.Path {
	p := modes.Path{RTT: 2 * lp.Delay, Loss: lp.Loss, Source: "config"}
	if lp.Rate > 0 && mtu > headerBytes {
		p.Bandwidth = float64(lp.Rate) / 8 * float64(mtu-headerBytes) / float64(mtu)
	}
	return p
}

// ProfileSteps lists the link settings a profile runs through: its
// schedule's steps, or its one setting.
func ProfileSteps(p wanlab.Profile) []wanlab.LinkParams {
	base := p.Link()
	if len(p.Steps) == 0 {
		return []wanlab.LinkParams{base}
	}
	out := make([]wanlab.LinkParams, len(p.Steps))
	for i, s := range p.Steps {
		lp := base
		lp.Delay, lp.Rate = s.RTT/2, s.Rate
		out[i] = lp
	}
	return out
}

// ExpectedModes returns the class of each of a profile's settings.
func ExpectedModes(p wanlab.Profile, t modes.Thresholds) []modes.Mode {
	var out []modes.Mode
	for _, lp := range ProfileSteps(p) {
		out = append(out, modes.Classify(SettingsPath(lp, p.MTU), t))
	}
	return out
}
