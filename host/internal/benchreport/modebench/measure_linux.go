//go:build linux

package modebench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
)

func measure(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	if err := wanlab.Available(); err != nil {
		unavailable(s, "WAN lab unavailable here: "+err.Error())
		return nil
	}
	var errs []error
	errs = append(errs, detection(ctx, env, s))
	codecs, why := pluginCodecs(ctx, env)
	errs = append(errs, switchLatency(ctx, env, s, codecs, why))
	errs = append(errs, adaptiveVsFixed(ctx, env, s, codecs, why))
	return errors.Join(errs...)
}

// pluginCodecs numbers the codec plugins of the run's plugin directory as
// a migration's source does (host/agent: sorted by algorithm, 1..n). The
// reason is set when there are none to use.
func pluginCodecs(ctx context.Context, env *benchreport.Env) ([]pipeline.Codec, string) {
	h, err := env.Plugins(ctx)
	if err != nil {
		return nil, "codec plugins unavailable: " + err.Error()
	}
	byAlgo := map[string]pipeline.Codec{}
	for _, p := range h.Plugins() {
		if p.Description().Kind != sdk.KindCodec {
			continue
		}
		c, err := p.Codec()
		if err != nil {
			return nil, fmt.Sprintf("codec plugin %s unusable: %v", p.Name(), err)
		}
		algo := c.Capabilities().Algorithm
		if _, dup := byAlgo[algo]; !dup {
			byAlgo[algo] = pipeline.Codec{Algorithm: algo, Codec: c}
		}
	}
	names := make([]string, 0, len(byAlgo))
	for n := range byAlgo {
		names = append(names, n)
	}
	sort.Strings(names)
	var list []pipeline.Codec
	for i, n := range names {
		c := byAlgo[n]
		c.ID = uint8(i + 1)
		list = append(list, c)
	}
	if l := modes.BuildLadder(list, nil); len(l) < 2 {
		return nil, fmt.Sprintf("no codec plugin with a known speed in %s (found %v)", env.PluginDir, names)
	}
	return list, ""
}

func memoryLike(n int) []byte {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	return p.Bytes(n, 11)
}

func mbit(bytesPerSec float64) float64 { return bytesPerSec * 8 / 1e6 }

// --- mode detection ---

func detection(ctx context.Context, env *benchreport.Env, s *benchreport.Section) error {
	t := modes.DefaultThresholds()
	n := benchreport.Pick(env, 2, 10)
	tab := &benchreport.Table{Title: TitleDetection, Columns: detectionColumns, How: fmt.Sprintf(
		"Each built-in WAN-lab profile (host/wanlab; a fresh two-host lab per profile) is probed %d times, each time on a fresh "+
			"transport session from h0 to h1 (mutual TLS 1.3, the transport's default 4 data connections, loss tracked from the "+
			"connections' TCP counters) with the real session-start probe (modes.Probe with its defaults: 5 pings, receiver-timed "+
			"bursts within 16 MiB and ~1 s), and the measured path is classified with host/modes' default thresholds (internet: RTT > %v "+
			"or bandwidth < %s or loss > %.2g %%; datacenter: RTT < %v and bandwidth >= %s). The expected mode is the same "+
			"classification applied to the link settings in force when each probe started (RTT = 2 x one-way delay; bandwidth = "+
			"the IP rate less 52 header bytes per MTU-sized packet; loss per direction); the variable profile's schedule keeps "+
			"running, so its probes meet whichever step is in force. Measured values are median (min–max, n) over the probes; "+
			"\"measured / set\" are medians of each probe's ratio to its settings. Loss is only known when a probe saw at least "+
			"1000 steady-state TCP segments.",
		n, t.InternetMinRTT, modes.FormatRate(t.InternetMaxBandwidth), 100*t.InternetMinLoss, t.DatacenterMaxRTT, modes.FormatRate(t.DatacenterMinBandwidth))}
	chart := &benchreport.BarChart{Title: "Mode detection: accuracy and probe against settings", YLabel: "fraction / ratio (1 = exact)"}
	acc := benchreport.Series{Name: "accuracy"}
	rttR := benchreport.Series{Name: "RTT measured/set"}
	bwR := benchreport.Series{Name: "bandwidth measured/set"}
	var errs []error
	for _, p := range wanlab.Profiles() {
		env.Logf("    mode detection: profile %s, %d probes", p.Name, n)
		ds, err := detectProfile(ctx, p, n, t)
		if err != nil {
			errs = append(errs, fmt.Errorf("detection on %s: %w", p.Name, err))
		}
		row, a, r, b := detectionRow(p, t, n, ds, err)
		tab.AddRow(row...)
		chart.Categories = append(chart.Categories, p.Name)
		acc.Values = append(acc.Values, a)
		rttR.Values = append(rttR.Values, r)
		bwR.Values = append(bwR.Values, b)
	}
	chart.Series = []benchreport.Series{acc, rttR, bwR}
	s.Add(tab, &benchreport.Figure{Title: "Mode detection over the WAN-lab profiles", File: FigDetection, Chart: chart,
		How: "From the table above: per profile, the fraction of probes classified as the settings are, and the medians of " +
			"measured / set RTT and bandwidth (1 = the probe saw exactly the settings; the user-space lab and the TLS session " +
			"share this machine's cores, so fast profiles read below their rate)."})
	return errors.Join(errs...)
}

func detectProfile(ctx context.Context, p wanlab.Profile, n int, t modes.Thresholds) ([]modeslab.Detection, error) {
	lab, err := wanlab.New(ctx, wanlab.Config{Profile: p})
	if err != nil {
		return nil, err
	}
	defer lab.Close()
	certs, err := modeslab.NewCerts(lab)
	if err != nil {
		return nil, err
	}
	var ds []modeslab.Detection
	for range n {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		d, err := modeslab.Detect(pctx, lab, modeslab.SessionOptions{Certs: certs}, t)
		cancel()
		if err != nil {
			return ds, err
		}
		ds = append(ds, d)
	}
	return ds, lab.Err()
}

// detectionRow renders one profile's probes; it also returns the chart's
// values (NaN when not measured).
func detectionRow(p wanlab.Profile, t modes.Thresholds, n int, ds []modeslab.Detection, err error) (row []benchreport.Cell, acc, rttRatio, bwRatio float64) {
	row = []benchreport.Cell{benchreport.Text(p.Name), benchreport.Text(settingsText(p)), benchreport.Text(expectedText(p, t))}
	nan := math.NaN()
	if len(ds) == 0 {
		why := "not measured"
		if err != nil {
			why = "failed: " + err.Error()
		}
		for len(row) < len(detectionColumns) {
			row = append(row, benchreport.Missing(why))
		}
		return row, nan, nan, nan
	}
	probes := benchreport.Textf("%d", len(ds))
	if len(ds) < n {
		probes = benchreport.Textf("%d of %d (then failed: %v)", len(ds), n, err)
	}
	counts := map[modes.Mode]int{}
	right := 0
	var rtts, bws, losses, rttRs, bwRs, took []float64
	setRTT, setRate := map[string]bool{}, map[string]bool{}
	for _, d := range ds {
		counts[d.Mode]++
		if d.Mode == d.Expected {
			right++
		}
		set := modeslab.SettingsPath(d.Link, p.MTU)
		rtts = append(rtts, d.Probe.Path.RTT.Seconds()*1e3)
		bws = append(bws, mbit(d.Probe.Path.Bandwidth))
		if set.RTT > 0 {
			rttRs = append(rttRs, float64(d.Probe.Path.RTT)/float64(set.RTT))
		}
		if set.Bandwidth > 0 {
			bwRs = append(bwRs, d.Probe.Path.Bandwidth/set.Bandwidth)
		}
		if d.Probe.LossKnown {
			losses = append(losses, 100*d.Probe.Path.Loss)
		}
		took = append(took, d.Probe.Elapsed.Seconds())
		setRTT[fmt.Sprint(set.RTT)] = true
		setRate[d.Link.Rate.String()] = true
	}
	var det []string
	for _, m := range modes.Modes {
		if counts[m] > 0 {
			det = append(det, fmt.Sprintf("%v ×%d", m, counts[m]))
		}
	}
	accuracy := float64(right) / float64(len(ds))
	rs, bs := benchreport.Summarize(rttRs), benchreport.Summarize(bwRs)
	row = append(row, probes, benchreport.Text(strings.Join(det, ", ")), benchreport.Percent(accuracy),
		withSet(benchreport.Summarize(rtts).Cell(2, "ms"), keys(setRTT)),
		withSet(benchreport.Summarize(bws).Cell(0, "Mbit/s"), keys(setRate)+" IP"))
	if len(losses) == 0 {
		row = append(row, benchreport.Missing(fmt.Sprintf("the probe reported loss unknown in all %d runs (under 1000 steady-state TCP segments in its burst); set %s", len(ds), lossText(p.Loss))))
	} else {
		c := withSet(benchreport.Summarize(losses).Cell(2, "%"), lossText(p.Loss))
		if len(losses) < len(ds) {
			c.Text += fmt.Sprintf("; known in %d of %d probes", len(losses), len(ds))
		}
		row = append(row, c)
	}
	row = append(row, benchreport.Textf("%.2fx, %.2fx", rs.Median, bs.Median), benchreport.Summarize(took).Cell(2, "s"))
	return row, accuracy, rs.Median, bs.Median
}

func withSet(c benchreport.Cell, set string) benchreport.Cell {
	if c.Missing != "" {
		return c
	}
	c.Text += "; set " + set
	return c
}

func keys(m map[string]bool) string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, " / ")
}

// --- mode-switch latency ---

func switchLatency(ctx context.Context, env *benchreport.Env, s *benchreport.Section, codecs []pipeline.Codec, why string) error {
	runs := benchreport.Pick(env, 1, 3)
	watch := benchreport.Pick(env, 10*time.Second, 15*time.Second)
	const changeAfter = 2 * time.Second
	const dataBytes = 32 << 20
	dc, err := wanlab.LookupProfile("dc")
	if err != nil {
		return err
	}
	tab := &benchreport.Table{Title: TitleSwitch, Columns: switchColumns, How: fmt.Sprintf(
		"One two-host WAN lab of the dc profile (MTU %d for both scenarios: a lab's MTU is fixed). Per run: the link of every "+
			"direction is set to the first profile's settings, a transport session is opened (mutual TLS, 4 data connections), "+
			"the session-start probe measures the path, its class is the starting mode (not manual), and Plan + the adaptive "+
			"controller drive a DWCP pipeline transfer (codec plugins from the run's plugin directory; a %d MiB real-memory-like "+
			"pattern repeated for as long as the transfer runs, checked byte for byte at the destination) exactly as a migration's "+
			"source does (host/agent). %v into the transfer the link settings change to the second profile's (wanlab SetAll); "+
			"the times run from that change to the controller's first mode decision, its first level decision in the direction the "+
			"new link calls for (heavier when the link became the bottleneck, lighter when it stopped being one; a decision the "+
			"other way, taken on windows from before the sender felt the change, does not count), and the first batch the "+
			"pipeline chose with that level (modes/modeslab.Recorder). Encoders and the controller are sized for this machine's "+
			"%d CPUs (the lab raises GOMAXPROCS for its forwarder threads; a migration's process does not run a lab). Each run watches up to %v. %d run(s); "+
			"median (min–max, n) over the runs that saw the event. These are reaction times, with no baseline to compare with: "+
			"the controller needs a window of >= 8 batches and 250 ms to decide a level, and the classifier's hysteresis "+
			"(25 %% margin, %v hold) before it changes the mode.",
		dc.MTU, dataBytes>>20, changeAfter, modeslab.Workers(), watch, runs, modes.DefaultThresholds().Hold)}
	s.Add(tab)
	if why != "" {
		for _, sc := range switchScenarios {
			row := []benchreport.Cell{benchreport.Text(sc.name), benchreport.Textf("%s → %s settings", sc.before, sc.after)}
			for len(row) < len(switchColumns) {
				row = append(row, benchreport.Missing(why))
			}
			tab.AddRow(row...)
		}
		return nil
	}
	lab, err := wanlab.New(ctx, wanlab.Config{Profile: dc})
	if err != nil {
		for _, sc := range switchScenarios {
			row := []benchreport.Cell{benchreport.Text(sc.name), benchreport.Textf("%s → %s settings", sc.before, sc.after)}
			for len(row) < len(switchColumns) {
				row = append(row, benchreport.Missing("lab failed: "+err.Error()))
			}
			tab.AddRow(row...)
		}
		return fmt.Errorf("switch latency: %w", err)
	}
	defer lab.Close()
	certs, err := modeslab.NewCerts(lab)
	if err != nil {
		return fmt.Errorf("switch latency: %w", err)
	}
	data := memoryLike(dataBytes)
	var errs []error
	for _, sc := range switchScenarios {
		before, err1 := wanlab.LookupProfile(sc.before)
		after, err2 := wanlab.LookupProfile(sc.after)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		var results []*modeslab.LinkChangeResult
		var failed error
		for r := range runs {
			env.Logf("    mode switch: %s, run %d of %d", sc.name, r+1, runs)
			rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			res, err := modeslab.LinkChange(rctx, lab, modeslab.LinkChangeConfig{
				Before: before.Link(), After: after.Link(), ChangeAfter: changeAfter, Watch: watch,
				Toward: sc.toward, WantMode: sc.want, Data: data, Codecs: codecs, Sessions: modeslab.SessionOptions{Certs: certs},
			})
			cancel()
			if err != nil {
				failed = fmt.Errorf("switch %s run %d: %w", sc.name, r+1, err)
				errs = append(errs, failed)
				break
			}
			env.Logf("    %s: started %v at %s; decisions:\n%s", sc.name, res.StartMode, res.StartStep, res.Summary)
			results = append(results, res)
		}
		tab.AddRow(switchRow(sc.name, before, after, runs, watch, results, failed)...)
	}
	return errors.Join(errs...)
}

func switchRow(name string, before, after wanlab.Profile, runs int, watch time.Duration, rs []*modeslab.LinkChangeResult, failed error) []benchreport.Cell {
	row := []benchreport.Cell{benchreport.Text(name),
		benchreport.Textf("%v, %v → %v, %v", before.RTT, before.Rate, after.RTT, after.Rate)}
	if len(rs) == 0 {
		for len(row) < len(switchColumns) {
			row = append(row, benchreport.Missing(fmt.Sprintf("failed: %v", failed)))
		}
		return row
	}
	nRuns := benchreport.Textf("%d", len(rs))
	if len(rs) < runs {
		nRuns = benchreport.Textf("%d of %d (then failed: %v)", len(rs), runs, failed)
	}
	modesSeen := map[string]int{}
	var toMode, toLevel, toBatch []float64
	firstLevel := map[string]int{}
	for _, r := range rs {
		modesSeen[fmt.Sprintf("%v → %v", r.StartMode, r.FinalMode)]++
		if d := r.ModeChange; d != nil {
			toMode = append(toMode, d.At.Sub(r.ChangedAt).Seconds())
		}
		if d := r.LevelChange; d != nil {
			toLevel = append(toLevel, d.At.Sub(r.ChangedAt).Seconds())
			firstLevel[fmt.Sprintf("%s → %s (%s-bound window)", d.From, d.To, d.Window.Bottleneck)]++
			if !r.LevelChosen.IsZero() {
				toBatch = append(toBatch, r.LevelChosen.Sub(r.ChangedAt).Seconds())
			}
		}
	}
	return append(row, nRuns, benchreport.Text(counted(modesSeen)),
		eventCell(toMode, len(rs), watch), eventCell(toLevel, len(rs), watch), eventCell(toBatch, len(rs), watch),
		nonEmpty(counted(firstLevel), fmt.Sprintf("none within %v", watch)))
}

// eventCell summarises the runs that saw an event and says how many did not.
func eventCell(v []float64, runs int, watch time.Duration) benchreport.Cell {
	if len(v) == 0 {
		return benchreport.Textf("none within %v (%d runs)", watch, runs)
	}
	c := benchreport.Summarize(v).Cell(2, "s")
	if len(v) < runs {
		c.Text += fmt.Sprintf("; none within %v in %d of %d runs", watch, runs-len(v), runs)
	}
	return c
}

func counted(m map[string]int) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if m[k] > 1 {
			out = append(out, fmt.Sprintf("%s ×%d", k, m[k]))
		} else {
			out = append(out, k)
		}
	}
	return strings.Join(out, "; ")
}

func nonEmpty(s, otherwise string) benchreport.Cell {
	if s == "" {
		return benchreport.Text(otherwise)
	}
	return benchreport.Text(s)
}
