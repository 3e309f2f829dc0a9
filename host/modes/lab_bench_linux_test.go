package modes_test

import (
	"context"
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
// fixed one and against plain TCP (below 1 is faster). The variable
// profile gets 256 MiB (the report's size): at its rates that is ~10 s,
// so every transfer meets all three of its 3 s steps; 48 MiB would end
// within the first.
func BenchmarkWANLabAdaptiveVsFixed(b *testing.B) {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	codecs := labCodecs()
	var fixed []pipeline.Choice
	for _, st := range modes.BuildLadder(codecs, nil) {
		if st.Ratio > 1 {
			fixed = append(fixed, st.Choice)
		}
	}
	for _, name := range []string{"internet", "variable", "wan-100ms-1g"} {
		b.Run(name, func(b *testing.B) {
			size := 48 << 20
			if name == "variable" {
				size = 256 << 20
			}
			data := p.Bytes(size, 11)
			prof := labProfile(b, name, nil)
			for b.Loop() {
				lab := wanlab.NewTest(b, wanlab.Config{Profile: prof})
				certs, err := modeslab.NewCerts(lab)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				timeOne := func(policy func(*modeslab.Pair) pipeline.Policy) time.Duration {
					if err := lab.SetProfile(prof); err != nil { // restart a variable profile's schedule
						b.Fatal(err)
					}
					pair, err := modeslab.OpenSessions(ctx, lab, modeslab.SessionOptions{Certs: certs})
					if err != nil {
						b.Fatal(err)
					}
					defer pair.Close()
					res, err := modeslab.TransferBytes(ctx, pair, data, modeslab.TransferConfig{Codecs: codecs, Policy: policy(pair), BatchBytes: 256 << 10})
					if err != nil {
						b.Fatal(err)
					}
					return res.Elapsed
				}
				best := time.Duration(1 << 62)
				for _, f := range fixed {
					d := timeOne(func(*modeslab.Pair) pipeline.Policy { return pipeline.FixedPolicy(f) })
					b.Logf("%s fixed %v: %s", name, f, d)
					best = min(best, d)
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
				b.Logf("%s adaptive: %s\n%s", name, adaptive, ctl.Summary())
				plain, err := modeslab.PlainTCP(ctx, lab, data)
				if err != nil {
					b.Fatal(err)
				}
				b.Logf("%s plain TCP: %s", name, plain)
				b.ReportMetric(adaptive.Seconds()/best.Seconds(), "adaptive/best-fixed")
				b.ReportMetric(adaptive.Seconds()/plain.Seconds(), "adaptive/plain-tcp")
				cancel()
				lab.Close()
			}
		})
	}
}
