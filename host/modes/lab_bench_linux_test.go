package modes

import (
	"bytes"
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// The validation report's mode tables, measured in the WAN lab (root,
// /dev/net/tun). Run: go test -run '^$' -bench WANLab -benchtime 1x ./host/modes/

var labExpect = []struct {
	profile string
	custom  *wanlab.Profile
	want    Mode
}{
	{profile: "dc", want: Datacenter},
	{profile: "metro", custom: &wanlab.Profile{Name: "metro", Description: "10 ms, 1 Gbit/s", RTT: 10 * time.Millisecond, Rate: wanlab.Gbps, MTU: 9000, QueueDelay: 10 * time.Millisecond}, want: Hybrid},
	{profile: "wan-100ms-1g", want: Internet},
	{profile: "wan-50ms-5g", want: Internet},
	{profile: "internet", want: Internet},
	{profile: "internet-lossy", want: Internet},
}

func labProfile(b *testing.B, name string, custom *wanlab.Profile) wanlab.Profile {
	if custom != nil {
		return *custom
	}
	p, err := wanlab.LookupProfile(name)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkWANLabModeDetection probes each profile three times and reports
// the fraction classified as expected and the probe's duration.
func BenchmarkWANLabModeDetection(b *testing.B) {
	for _, c := range labExpect {
		b.Run(c.profile, func(b *testing.B) {
			lab := wanlab.NewTest(b, wanlab.Config{Profile: labProfile(b, c.profile, c.custom)})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			right, runs := 0, 0
			var took time.Duration
			for b.Loop() {
				for range 3 {
					src, dst := labSessions(b, ctx, lab)
					done := make(chan error, 1)
					go func() { _, err := Respond(ctx, dst); done <- err }()
					res, err := Probe(ctx, src, ProbeConfig{})
					if err != nil {
						b.Fatal(err)
					}
					_ = src.Send(ctx, []byte{1}) // ends Respond
					<-done
					runs++
					took += res.Elapsed
					if Classify(res.Path, DefaultThresholds()) == c.want {
						right++
					}
					b.Logf("%s: %v -> %v", c.profile, res.Path, Classify(res.Path, DefaultThresholds()))
				}
			}
			b.ReportMetric(float64(right)/float64(runs), "accuracy")
			b.ReportMetric(took.Seconds()/float64(runs), "probe-s")
		})
	}
}

// BenchmarkWANLabAdaptiveVsFixed carries the same 48 MiB of memory-like
// data over each profile with the adaptive controller, with every fixed
// codec step, and with a plain TCP stream (no TLS, no compression), and
// reports the adaptive transfer's time against the best fixed one and
// against plain TCP (below 1 is faster).
func BenchmarkWANLabAdaptiveVsFixed(b *testing.B) {
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	data := p.Bytes(48<<20, 11)
	fixed := []pipeline.Choice{{Codec: 1, Level: 1}, {Codec: 2, Level: 1}, {Codec: 2, Level: 2}, {Codec: 2, Level: 3}}
	for _, name := range []string{"internet", "variable", "wan-100ms-1g"} {
		b.Run(name, func(b *testing.B) {
			prof := labProfile(b, name, nil)
			for b.Loop() {
				lab := wanlab.NewTest(b, wanlab.Config{Profile: prof})
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				timeOne := func(policy pipeline.Policy) time.Duration {
					if err := lab.SetProfile(prof); err != nil { // restart a variable profile's schedule
						b.Fatal(err)
					}
					src, dst := labSessions(b, ctx, lab)
					start := time.Now()
					if got := labTransfer(b, ctx, src, dst, data, policy); !bytes.Equal(got, data) {
						b.Fatal("not byte-exact")
					}
					return time.Since(start)
				}
				best := time.Duration(1 << 62)
				for _, f := range fixed {
					d := timeOne(pipeline.FixedPolicy(f))
					b.Logf("%s fixed %v: %s", name, f, d)
					best = min(best, d)
				}
				codecs := []pipeline.Codec{{ID: 1, Algorithm: "s2", Codec: s2codec.New()}, {ID: 2, Algorithm: "zstd", Codec: zstdcodec.New()}}
				path := Path{RTT: prof.RTT, Bandwidth: float64(prof.Rate) / 8, Source: "config"}
				mode := Classify(path, DefaultThresholds())
				settings, err := Plan(mode, path, codecs, PlanConfig{})
				if err != nil {
					b.Fatal(err)
				}
				ctl, err := NewController(ControllerConfig{Settings: settings, Path: path, Thresholds: DefaultThresholds()})
				if err != nil {
					b.Fatal(err)
				}
				adaptive := timeOne(ctl)
				b.Logf("%s adaptive: %s\n%s", name, adaptive, ctl.Summary())
				plain := plainTCP(b, ctx, lab, data)
				b.Logf("%s plain TCP: %s", name, plain)
				b.ReportMetric(adaptive.Seconds()/best.Seconds(), "adaptive/best-fixed")
				b.ReportMetric(adaptive.Seconds()/plain.Seconds(), "adaptive/plain-tcp")
				cancel()
				lab.Close()
			}
		})
	}
}

// plainTCP times one TCP stream carrying data from host 0 to host 1.
func plainTCP(b *testing.B, ctx context.Context, lab *wanlab.Lab, data []byte) time.Duration {
	h0, h1 := lab.Host(0), lab.Host(1)
	ln, err := lab.Listen(h1, "tcp", net.JoinHostPort(h1.Addr.String(), "0"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	start := time.Now()
	c, err := lab.Dial(ctx, h0, "tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := c.Write(data); err != nil {
		b.Fatal(err)
	}
	c.Close()
	if n := <-got; n != int64(len(data)) {
		b.Fatalf("plain TCP delivered %d of %d bytes", n, len(data))
	}
	return time.Since(start)
}
