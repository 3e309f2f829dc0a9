// Package modebench measures section 3 of the validation report, hybrid
// mode, in the WAN lab: how well the session-start probe detects the mode
// of each lab profile, how fast the adaptive controller reacts when the
// link changes under a running transfer, and what the controller achieves
// on the variable profile against every fixed codec step and a plain TCP
// stream. The experiments themselves are host/modes/modeslab's, shared
// with host/modes' lab tests and benchmarks.
//
// It owns the part's tables and charts. It must not hold a number that
// this run did not measure: what cannot run here (no root, no TUN device,
// no plugins) is a cell that says why.
package modebench

import (
	"context"
	"fmt"
	"strings"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Table titles and chart files the part promises.
const (
	TitleDetection = "Hybrid mode: mode detection over the WAN-lab profiles"
	TitleSwitch    = "Hybrid mode: mode-switch latency after a link change"
	TitleAdaptive  = "Hybrid mode: adaptive controller against fixed settings on the variable profile"

	FigDetection = "modebench-detection.svg"
	FigAdaptive  = "modebench-adaptive.svg"
)

// Hybrid is the whole of section 3.
var Hybrid = benchreport.Part{
	Name:    "modebench: hybrid mode in the WAN lab",
	Tables:  []string{TitleDetection, TitleSwitch, TitleAdaptive},
	Figures: []string{FigDetection, FigAdaptive},
	Run:     runHybrid,
}

// Columns of the tables (shared by the measured and the unavailable forms).
var (
	detectionColumns = []string{"profile", "settings", "expected mode (settings vs thresholds)", "probes", "detected",
		"accuracy", "RTT measured (set)", "bandwidth measured (set)", "loss measured (set)", "measured / set: RTT, bandwidth", "probe time"}
	switchColumns = []string{"scenario", "link before → after", "runs", "mode at start → end",
		"change → mode decision", "change → first level decision towards the new link", "change → first batch at that level", "that level decision"}
	adaptiveColumns = []string{"policy", "runs", "stream carried", "throughput (stream)", "bytes on the wire",
		"ratio", "time vs plain TCP", "time vs best fixed", "steps used"}
)

// switchScenarios are the link changes timed; both run in one lab of the
// dc profile (its MTU: a lab's MTU cannot change while it runs).
var switchScenarios = []struct {
	name          string
	before, after string     // profiles whose link settings apply
	toward        int        // the level move the new link calls for: +1 heavier, -1 lighter
	want          modes.Mode // the mode the new link calls for
}{
	{"datacenter → internet", "dc", "internet", +1, modes.Internet},
	{"internet → datacenter", "internet", "dc", -1, modes.Datacenter},
}

func runHybrid(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	return measure(ctx, env, s)
}

// unavailable adds every table with its rows and the reason in each
// measured cell, and the charts' notes.
func unavailable(s *benchreport.Section, why string) {
	t := modes.DefaultThresholds()
	det := &benchreport.Table{Title: TitleDetection, Columns: detectionColumns,
		How: "Not measured: " + why + ". The expected modes are the profiles' settings classified with host/modes' default thresholds."}
	for _, p := range wanlab.Profiles() {
		row := []benchreport.Cell{benchreport.Text(p.Name), benchreport.Text(settingsText(p)), benchreport.Text(expectedText(p, t))}
		for len(row) < len(detectionColumns) {
			row = append(row, benchreport.Missing(why))
		}
		det.AddRow(row...)
	}
	sw := &benchreport.Table{Title: TitleSwitch, Columns: switchColumns, How: "Not measured: " + why + "."}
	for _, sc := range switchScenarios {
		row := []benchreport.Cell{benchreport.Text(sc.name), benchreport.Textf("%s → %s settings", sc.before, sc.after)}
		for len(row) < len(switchColumns) {
			row = append(row, benchreport.Missing(why))
		}
		sw.AddRow(row...)
	}
	ad := &benchreport.Table{Title: TitleAdaptive, Columns: adaptiveColumns, How: "Not measured: " + why + "."}
	row := []benchreport.Cell{benchreport.Text("all policies")}
	for len(row) < len(adaptiveColumns) {
		row = append(row, benchreport.Missing(why))
	}
	ad.AddRow(row...)
	s.Add(det, sw, ad)
	s.Note("Chart %s: not measured: %s.", FigDetection, why)
	s.Note("Chart %s: not measured: %s.", FigAdaptive, why)
}

// settingsText is a short form of a profile's link settings.
func settingsText(p wanlab.Profile) string {
	if len(p.Steps) > 0 {
		parts := make([]string, len(p.Steps))
		for i, st := range p.Steps {
			parts[i] = fmt.Sprintf("%v of %v/%v", st.For, st.RTT, st.Rate)
		}
		return fmt.Sprintf("cycling %s; loss %s, MTU %d", strings.Join(parts, " → "), lossText(p.Loss), p.MTU)
	}
	return fmt.Sprintf("RTT %v, %v, loss %s, MTU %d", p.RTT, p.Rate, lossText(p.Loss), p.MTU)
}

func lossText(l float64) string { return fmt.Sprintf("%.3g %%", 100*l) }

// expectedText classifies each of a profile's settings.
func expectedText(p wanlab.Profile, t modes.Thresholds) string {
	var names []string
	for _, m := range modeslab.ExpectedModes(p, t) {
		names = append(names, m.String())
	}
	if len(names) > 1 {
		same := true
		for _, n := range names {
			same = same && n == names[0]
		}
		if same {
			return names[0] + " (every step)"
		}
		return strings.Join(names, " / ") + " (by step)"
	}
	return strings.Join(names, "")
}
