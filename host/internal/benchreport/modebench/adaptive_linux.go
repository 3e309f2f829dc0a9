//go:build linux

package modebench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
)

// policyRuns is what one policy did over the runs. Each run carries a
// stream for a whole number of the profile's cycles; times are seconds
// per byte of stream carried.
type policyRuns struct {
	name             string
	fixed            bool
	carried, perByte []float64 // stream bytes, seconds per stream byte
	wire             []float64 // bytes
	vsPlain, vsBest  []float64
	steps            map[string]int
	failed           error
}

// record adds one run's transfer.
func (p *policyRuns) record(carried, wire int64, elapsed time.Duration) float64 {
	pb := elapsed.Seconds() / float64(carried)
	p.carried = append(p.carried, float64(carried))
	p.wire = append(p.wire, float64(wire))
	p.perByte = append(p.perByte, pb)
	return pb
}

func adaptiveVsFixed(ctx context.Context, env *benchreport.Env, s *benchreport.Section, codecs []pipeline.Codec, why string) error {
	runs := benchreport.Pick(env, 1, 3)
	size := benchreport.Pick(env, 64<<20, 256<<20)
	prof, err := wanlab.LookupProfile("variable")
	if err != nil {
		return err
	}
	var cycle time.Duration
	for _, st := range prof.Steps {
		cycle += st.For
	}
	cycles := benchreport.Pick(env, 1, 2)
	dur := time.Duration(cycles) * cycle
	tab := &benchreport.Table{Title: TitleAdaptive, Columns: adaptiveColumns}
	fig := &benchreport.Figure{Title: "Adaptive controller against fixed settings on the variable profile", File: FigAdaptive}
	if why != "" {
		row := []benchreport.Cell{benchreport.Text("all policies")}
		for len(row) < len(adaptiveColumns) {
			row = append(row, benchreport.Missing(why))
		}
		tab.AddRow(row...)
		tab.How = "Not measured: " + why + "."
		s.Add(tab)
		s.Note("Chart %s: not measured: %s.", FigAdaptive, why)
		return nil
	}
	lab, err := wanlab.New(ctx, wanlab.Config{Profile: prof})
	if err != nil {
		tab.AddRow(benchreport.Text("all policies"), benchreport.Missing("lab failed: "+err.Error()), benchreport.Missing("lab failed"),
			benchreport.Missing("lab failed"), benchreport.Missing("lab failed"), benchreport.Missing("lab failed"),
			benchreport.Missing("lab failed"), benchreport.Missing("lab failed"), benchreport.Missing("lab failed"))
		s.Add(tab)
		return fmt.Errorf("adaptive vs fixed: %w", err)
	}
	defer lab.Close()
	certs, err := modeslab.NewCerts(lab)
	if err != nil {
		return fmt.Errorf("adaptive vs fixed: %w", err)
	}
	data := memoryLike(size)
	ladder := modes.BuildLadder(codecs, nil)
	if env.Quick && len(ladder) > 1 && ladder[0].Ratio <= 1 {
		// Storing is plain TCP plus DWCP's framing and TLS: the full run
		// measures it, the quick run saves its time.
		ladder = ladder[1:]
	}
	plain := &policyRuns{name: "plain TCP (1 stream, no TLS, no codec)"}
	var fixed []*policyRuns
	for _, st := range ladder {
		fixed = append(fixed, &policyRuns{name: "fixed " + st.Name, fixed: true, steps: map[string]int{st.Name: 1}})
	}
	adaptive := &policyRuns{name: "adaptive controller", steps: map[string]int{}}
	var errs []error
	for r := range runs {
		env.Logf("    adaptive vs fixed: run %d of %d, %v per transfer (%d cycles of the schedule)", r+1, runs, dur, cycles)
		env.Logf("      plain TCP ...")
		if err := lab.SetProfile(prof); err != nil { // the schedule starts again, as for every policy
			return errors.Join(append(errs, err)...)
		}
		pt, n, err := modeslab.PlainTCPFor(ctx, lab, data, dur)
		if err != nil {
			plain.failed = err
			errs = append(errs, fmt.Errorf("plain TCP: %w", err))
			break
		}
		plainPB := plain.record(n, n, pt)
		took := map[*policyRuns]float64{plain: plainPB}
		best := math.Inf(1)
		for i, st := range ladder {
			env.Logf("      fixed %s ...", st.Name)
			res, err := dwcpRun(ctx, lab, certs, prof, data, dur, codecs, pipeline.FixedPolicy(st.Choice), nil)
			if err != nil {
				fixed[i].failed = err
				errs = append(errs, fmt.Errorf("fixed %s: %w", st.Name, err))
				continue
			}
			pb := fixed[i].record(int64(res.Source.BytesIn), int64(res.Source.WireBytes), res.Elapsed)
			took[fixed[i]] = pb
			best = min(best, pb)
		}
		env.Logf("      adaptive ...")
		var ctl *modes.Controller
		res, err := dwcpRun(ctx, lab, certs, prof, data, dur, codecs, nil, &ctl)
		if err != nil {
			adaptive.failed = err
			errs = append(errs, fmt.Errorf("adaptive: %w", err))
		} else {
			took[adaptive] = adaptive.record(int64(res.Source.BytesIn), int64(res.Source.WireBytes), res.Elapsed)
			adaptive.steps[stepsUsed(ctl)]++
			env.Logf("      adaptive carried %d MiB in %v; decisions:\n%s", res.Source.BytesIn>>20, res.Elapsed.Round(time.Millisecond), ctl.Summary())
		}
		for p, t := range took {
			p.vsPlain = append(p.vsPlain, t/plainPB)
			if !math.IsInf(best, 1) {
				p.vsBest = append(p.vsBest, t/best)
			}
		}
	}
	all := append(append([]*policyRuns{plain}, fixed...), adaptive)
	series := benchreport.Series{Name: "median throughput (MB/s of stream)"}
	for _, p := range all {
		tab.AddRow(adaptiveRow(p)...)
		tp := make([]float64, len(p.perByte))
		for i, t := range p.perByte {
			tp[i] = 1 / t / 1e6
		}
		v := math.NaN()
		if len(tp) > 0 {
			v = benchreport.Summarize(tp).Median
		}
		series.Values = append(series.Values, v)
	}
	cats := make([]string, len(all))
	for i, p := range all {
		cats[i] = strings.TrimPrefix(strings.SplitN(p.name, " (", 2)[0], "fixed ")
	}
	tab.How = fmt.Sprintf("A two-host WAN lab of the variable profile (%s; the schedule restarts from its first step at "+
		"the start of every transfer, so every policy meets the same sequence of link changes). In each run every policy "+
		"carries a real-memory-like stream (sdk/conformance, seed 11, %d MiB repeated) for %v, %d whole cycle(s) of the "+
		"schedule: the source stops reading then, and the transfer ends when the destination has confirmed every byte "+
		"verified (delivered bytes are compared with the sent ones). A fixed amount of data would instead end in a fat or a thin "+
		"phase depending on small differences in speed, and that, not the policy, would decide the times (docs/modes.md). "+
		"Policies, in this order: plain TCP (one connection from h0 to h1, no TLS, no framing, no compression: the baseline), "+
		"DWCP with each fixed step of the codec ladder built from the run's codec plugins (modes.BuildLadder), and DWCP with the "+
		"adaptive controller (which also sets the number of data connections). Every DWCP transfer opens a fresh transport "+
		"session (mutual TLS, 4 data connections), runs the session-start probe (so all of them start on connections warmed "+
		"alike), plans with modes.Plan for the probed path's class (batch and checkpoint sizes from the plan for every policy; "+
		"the data is raw, not a QEMU stream, so no page stage), restarts the schedule and sends; only the policy differs. "+
		"Encoders and the controller are sized for this machine's %d CPUs (the lab raises GOMAXPROCS for its forwarder "+
		"threads; a migration's process does not run a lab). The quick run leaves out the store step. Throughput is stream "+
		"bytes carried / time to the destination's confirmation; bytes on the wire are DWCP frame bytes (TLS and TCP headers "+
		"not counted) or, for plain TCP, the payload. \"Time vs\" is the time this policy takes per byte of stream against "+
		"plain TCP's and the fastest fixed step's in the same run (below 1: faster). %d run(s); median (min–max, n).",
		settingsText(prof), size>>20, dur, cycles, modeslab.Workers(), runs)
	fig.How = "Median stream throughput (stream bytes carried / time to the destination's confirmation) per policy, from the table above."
	fig.Chart = &benchreport.BarChart{Title: "Variable profile: throughput by policy", YLabel: "MB/s of stream", Categories: cats,
		Series: []benchreport.Series{series}}
	s.Add(tab, fig)
	if len(adaptive.vsBest) > 0 {
		s.Note("On the variable profile the adaptive controller took %s the time per byte of stream of the fastest fixed step in the same run, and %s that of plain TCP.",
			benchreport.Summarize(adaptive.vsBest).Cell(2, "x").Text, benchreport.Summarize(adaptive.vsPlain).Cell(2, "x").Text)
	}
	return errors.Join(errs...)
}

// dwcpRun is one DWCP transfer of data, repeated for dur, on a fresh
// session: probe, plan, restart the profile's schedule, send. With policy
// nil it runs the adaptive controller and stores it in *ctl.
func dwcpRun(ctx context.Context, lab *wanlab.Lab, certs *modeslab.Certs, prof wanlab.Profile, data []byte, dur time.Duration,
	codecs []pipeline.Codec, policy pipeline.Policy, ctl **modes.Controller) (modeslab.TransferResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := lab.SetProfile(prof); err != nil {
		return modeslab.TransferResult{}, err
	}
	pair, err := modeslab.OpenSessions(ctx, lab, modeslab.SessionOptions{Certs: certs})
	if err != nil {
		return modeslab.TransferResult{}, err
	}
	defer pair.Close()
	pr, err := pair.Probe(ctx, modes.ProbeConfig{})
	if err != nil {
		return modeslab.TransferResult{}, err
	}
	mode := modes.Classify(pr.Path, modes.Thresholds{})
	c, settings, err := pair.Adaptive(mode, false, pr.Path, codecs, modes.Thresholds{}, nil)
	if err != nil {
		return modeslab.TransferResult{}, err
	}
	if policy == nil {
		policy = c
		*ctl = c
	}
	if err := lab.SetProfile(prof); err != nil {
		return modeslab.TransferResult{}, err
	}
	res, err := modeslab.TransferFor(ctx, pair, data, dur, modeslab.TransferConfig{Codecs: codecs, Policy: policy,
		BatchBytes: settings.BatchBytes, CheckpointBytes: settings.CheckpointBytes})
	return res, err
}

// stepsUsed describes the adaptive controller's path through the ladder.
func stepsUsed(ctl *modes.Controller) string {
	levels, modeChanges, streams := 0, 0, 0
	for _, d := range ctl.Decisions() {
		switch d.Kind {
		case modes.KindLevel:
			levels++
		case modes.KindMode:
			modeChanges++
		case modes.KindStreams:
			streams++
		}
	}
	st := ctl.Status()
	return fmt.Sprintf("ended at %s in %v mode with %d streams after %d level, %d mode and %d streams decisions",
		st.Step, st.Mode, st.Streams, levels, modeChanges, streams)
}

func adaptiveRow(p *policyRuns) []benchreport.Cell {
	row := []benchreport.Cell{benchreport.Text(p.name)}
	if len(p.perByte) == 0 {
		why := "not measured"
		if p.failed != nil {
			why = "failed: " + p.failed.Error()
		}
		for len(row) < len(adaptiveColumns) {
			row = append(row, benchreport.Missing(why))
		}
		return row
	}
	tp := make([]float64, len(p.perByte))
	ratio := make([]float64, len(p.perByte))
	mib := make([]float64, len(p.perByte))
	carried := make([]float64, len(p.perByte))
	for i, t := range p.perByte {
		tp[i] = 1 / t / 1e6
		ratio[i] = p.carried[i] / p.wire[i]
		mib[i] = p.wire[i] / (1 << 20)
		carried[i] = p.carried[i] / (1 << 20)
	}
	runs := benchreport.Textf("%d", len(p.perByte))
	if p.failed != nil {
		runs.Text += fmt.Sprintf(" (a run failed: %v)", p.failed)
	}
	steps := "one connection"
	switch {
	case p.fixed:
		steps = "fixed"
	case len(p.steps) > 0:
		steps = counted(p.steps)
	}
	return append(row, runs, benchreport.Summarize(carried).Cell(0, "MiB"), benchreport.Summarize(tp).Cell(1, "MB/s"),
		benchreport.Summarize(mib).Cell(1, "MiB"), benchreport.Summarize(ratio).Cell(2, ""),
		ratioCell(p.vsPlain), ratioCell(p.vsBest), benchreport.Text(steps))
}

func ratioCell(v []float64) benchreport.Cell {
	if len(v) == 0 {
		return benchreport.Missing("no baseline measured in the same run")
	}
	return benchreport.Summarize(v).Cell(2, "x")
}
