package modes_test

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// The mode measurements in the WAN lab (root, /dev/net/tun), with the
// experiments of host/modes/modeslab that the validation report also runs
// (host/internal/benchreport/modebench). Run:
// go test -run '^$' -bench WANLab -benchtime 1x ./host/modes/

var labExpect = []struct {
	profile string
	custom  *wanlab.Profile
	want    modes.Mode
}{
	{profile: "dc", want: modes.Datacenter},
	{profile: "metro", custom: &wanlab.Profile{Name: "metro", Description: "10 ms, 1 Gbit/s", RTT: 10 * time.Millisecond, Rate: wanlab.Gbps, MTU: 9000, QueueDelay: 10 * time.Millisecond}, want: modes.Hybrid},
	{profile: "wan-100ms-1g", want: modes.Internet},
	{profile: "wan-50ms-5g", want: modes.Internet},
	{profile: "internet", want: modes.Internet},
	{profile: "internet-lossy", want: modes.Internet},
}

func labProfile(tb testing.TB, name string, custom *wanlab.Profile) wanlab.Profile {
	tb.Helper()
	if custom != nil {
		return *custom
	}
	p, err := wanlab.LookupProfile(name)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkWANLabModeDetection probes each profile three times and reports
// the fraction classified as the profile's settings are (which must be the
// mode this table expects) and the probe's duration.
func BenchmarkWANLabModeDetection(b *testing.B) {
	for _, c := range labExpect {
		b.Run(c.profile, func(b *testing.B) {
			lab := wanlab.NewTest(b, wanlab.Config{Profile: labProfile(b, c.profile, c.custom)})
			certs, err := modeslab.NewCerts(lab)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			right, runs := 0, 0
			var took time.Duration
			for b.Loop() {
				for range 3 {
					d, err := modeslab.Detect(ctx, lab, modeslab.SessionOptions{Certs: certs}, modes.DefaultThresholds())
					if err != nil {
						b.Fatal(err)
					}
					if d.Expected != c.want {
						b.Fatalf("the settings %v classify as %v, this table expects %v", d.Link, d.Expected, c.want)
					}
					runs++
					took += d.Probe.Elapsed
					if d.Mode == d.Expected {
						right++
					}
					b.Logf("%s: %v -> %v", c.profile, d.Probe.Path, d.Mode)
				}
			}
			b.ReportMetric(float64(right)/float64(runs), "accuracy")
			b.ReportMetric(took.Seconds()/float64(runs), "probe-s")
		})
	}
}

// BenchmarkWANLabAdaptiveVsFixed carries the same memory-like data over
// each profile with the adaptive controller, with every fixed codec step
// of the ladder but storing, and with a plain TCP stream (no TLS, no
// compression), and reports the adaptive transfer's time against the best
// fixed one and against plain TCP (below 1 is faster): per run
// (adaptive/best-fixed, the fastest fixed step of the same run) and over
// the runs (adaptive/best-fixed-mean: the adaptive's mean against the
// fixed step with the best mean). Static profiles carry 48 MiB. The
// variable profile's transfers run for two of its cycles (12 s) and
// compare stream throughput (time per byte): a fixed amount of data would
// end in a fat or a thin phase depending on small differences in speed,
// and that discreteness, not the policy, would decide the times.
// Run with -benchtime 3x for three runs.
func BenchmarkWANLabAdaptiveVsFixed(b *testing.B) {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	codecs := labCodecs()
	var fixed []modes.Step
	for _, st := range modes.BuildLadder(codecs, nil) {
		if st.Ratio > 1 {
			fixed = append(fixed, st)
		}
	}
	for _, name := range []string{"internet", "variable", "wan-100ms-1g", "dc", "wan-50ms-5g", "internet-lossy"} {
		b.Run(name, func(b *testing.B) {
			prof := labProfile(b, name, nil)
			var cycle time.Duration
			for _, st := range prof.Steps {
				cycle += st.For
			}
			size := 48 << 20
			if cycle > 0 {
				size = 256 << 20 // repeated for as long as the transfer runs
			}
			data := p.Bytes(size, 11)
			// perByte is the seconds one transfer took per byte carried.
			perByte := func(res modeslab.TransferResult) float64 {
				return res.Elapsed.Seconds() / float64(res.Source.BytesIn)
			}
			sums := map[string]float64{}
			var perRun []float64
			for b.Loop() {
				lab := wanlab.NewTest(b, wanlab.Config{Profile: prof})
				certs, err := modeslab.NewCerts(lab)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				timeOne := func(policy func(*modeslab.Pair) pipeline.Policy) float64 {
					if err := lab.SetProfile(prof); err != nil { // restart a variable profile's schedule
						b.Fatal(err)
					}
					pair, err := modeslab.OpenSessions(ctx, lab, modeslab.SessionOptions{Certs: certs})
					if err != nil {
						b.Fatal(err)
					}
					defer pair.Close()
					cfg := modeslab.TransferConfig{Codecs: codecs, Policy: policy(pair), BatchBytes: 256 << 10}
					var res modeslab.TransferResult
					if cycle > 0 {
						res, err = modeslab.TransferFor(ctx, pair, data, 2*cycle, cfg)
					} else {
						res, err = modeslab.TransferBytes(ctx, pair, data, cfg)
					}
					if err != nil {
						b.Fatal(err)
					}
					return perByte(res)
				}
				best := math.Inf(1)
				for _, f := range fixed {
					d := timeOne(func(*modeslab.Pair) pipeline.Policy { return pipeline.FixedPolicy(f.Choice) })
					b.Logf("%s fixed %s: %.1f MB/s of stream", name, f.Name, 1/d/1e6)
					best = min(best, d)
					sums[f.Name] += d
				}
				path := modes.Path{RTT: prof.RTT, Bandwidth: float64(prof.Rate) / 8, Source: "config"}
				var ctl *modes.Controller
				adaptive := timeOne(func(pair *modeslab.Pair) pipeline.Policy {
					var err error
					ctl, _, err = pair.Adaptive(modes.Classify(path, modes.DefaultThresholds()), false, path, codecs, modes.DefaultThresholds(), nil)
					if err != nil {
						b.Fatal(err)
					}
					return ctl
				})
				sums["adaptive"] += adaptive
				b.Logf("%s adaptive: %.1f MB/s of stream, %.3f of the best fixed step's time\n%s", name, 1/adaptive/1e6, adaptive/best, ctl.Summary())
				var plain float64
				if cycle > 0 {
					took, n, err := modeslab.PlainTCPFor(ctx, lab, data, 2*cycle)
					if err != nil {
						b.Fatal(err)
					}
					plain = took.Seconds() / float64(n)
				} else {
					took, err := modeslab.PlainTCP(ctx, lab, data)
					if err != nil {
						b.Fatal(err)
					}
					plain = took.Seconds() / float64(len(data))
				}
				b.Logf("%s plain TCP: %.1f MB/s", name, 1/plain/1e6)
				perRun = append(perRun, adaptive/best)
				b.ReportMetric(adaptive/plain, "adaptive/plain-tcp")
				cancel()
				lab.Close()
			}
			bestMean := math.Inf(1)
			for _, f := range fixed {
				bestMean = min(bestMean, sums[f.Name])
			}
			mean := 0.0
			for _, r := range perRun {
				mean += r / float64(len(perRun))
			}
			b.ReportMetric(mean, "adaptive/best-fixed")
			b.ReportMetric(sums["adaptive"]/bestMean, "adaptive/best-fixed-mean")
		})
	}
}
