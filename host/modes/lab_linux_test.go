package modes

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/wanlab"
)

// TestProbeInTheWANLab runs the probe between two hosts of the
// packet-level lab (host/wanlab) on several link profiles and checks what
// it measures and how the path is classified. It skips when the lab cannot
// run here (not root, no /dev/net/tun) unless DWCP_REQUIRE_ROOT_TESTS=1.
func TestProbeInTheWANLab(t *testing.T) {
	if raceEnabled {
		// The probe measures what this process can push through TLS; the
		// race detector slows that several times, so the dc profile's
		// 4 Gbit/s cannot be probed. `make test` runs this test again
		// without -race.
		t.Skip("probe bandwidth is CPU-bound under -race; run without -race (make test does)")
	}
	wanlab.SkipUnlessAvailable(t)
	metro := wanlab.Profile{Name: "metro", Description: "10 ms, 1 Gbit/s", RTT: 10 * time.Millisecond, Rate: wanlab.Gbps, MTU: 9000, QueueDelay: 10 * time.Millisecond}
	for _, c := range []struct {
		profile   string
		custom    *wanlab.Profile
		want      Mode
		rttLo     time.Duration
		rttHi     time.Duration
		bwLo      float64 // fraction of the profile's rate
		lossLo    float64
		lossHi    float64
		checkLoss bool
	}{
		// (dc: the probe sees its 4 Gbit/s only as far as this machine's
		// load lets the user-space link and the TLS session run; the
		// reference transfer below decides what to expect.)
		// (The probe runs through the session's TLS and framing, the
		// reference is plain TCP: at 4 Gbit/s on 2 cores the probe is
		// CPU-bound and read 0.3-0.6 of it in repeated runs, 1.15-1.92
		// Gbit/s. What matters is the class, checked below.)
		{profile: "dc", want: Datacenter, rttLo: 0, rttHi: 2 * time.Millisecond, bwLo: 0.25},
		{profile: "metro", custom: &metro, want: Hybrid, rttLo: 9 * time.Millisecond, rttHi: 20 * time.Millisecond, bwLo: 0.3},
		{profile: "internet", want: Internet, rttLo: 59 * time.Millisecond, rttHi: 90 * time.Millisecond, bwLo: 0.5},
		// ±1 ms of jitter each way: the kernel's minimum RTT of the
		// session's connections can read 78 ms (78.6 ms seen).
		{profile: "internet-lossy", want: Internet, rttLo: 77500 * time.Microsecond, rttHi: 130 * time.Millisecond, lossLo: 0.002, lossHi: 0.05, checkLoss: true},
	} {
		t.Run(c.profile, func(t *testing.T) {
			var p wanlab.Profile
			if c.custom != nil {
				p = *c.custom
			} else {
				var err error
				if p, err = wanlab.LookupProfile(c.profile); err != nil {
					t.Fatal(err)
				}
			}
			l := wanlab.NewTest(t, wanlab.Config{Profile: p, Seed: 7})
			a, b := l.Host(0), l.Host(1)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			// A transport session between the two lab hosts, as a
			// migration would have: its data connections are dialled
			// from a's namespace and tracked for their TCP counters.
			ln, err := l.Listen(b, "tcp4", netip.AddrPortFrom(b.Addr, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			var loss ConnLoss
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				return l.Dial(ctx, a, network, addr)
			}
			cli, srv := sessionPairOn(t, ln, loss.WrapDial(dial), 4)
			var refBefore float64
			if c.bwLo != 0 {
				refBefore = referenceGoodput(ctx, t, l, a, b)
			}
			var res ProbeResult
			for attempt := 1; ; attempt++ {
				done := respondAsync(ctx, srv)
				var err error
				st0 := l.Stats()
				res, err = Probe(ctx, cli, ProbeConfig{Loss: &loss})
				late := l.Stats().MeanLateSince(st0, a.Name, b.Name)
				if err != nil {
					t.Fatal(err)
				}
				if r := <-done; r.err != nil {
					t.Fatal(r.err)
				}
				cnt, cerr := loss.TCPCounters()
				t.Logf("attempt %d: TCP counters after the probe: %+v %v; RTT %v, rounds %+v", attempt, cnt, cerr, res.Path.RTT, res.Rounds)
				// The pings are timed in user space at both ends, the
				// kernel's RTT of the same connections by their ACKs.
				// When the pings read more than the bound and more than a
				// millisecond above the kernel, this host delayed them
				// (the whole process stalls for ms at load 6-10 on two
				// cores; the bursts of the same probe then stall too), not
				// the path. The product does not trust such a reading
				// either: the controller takes the kernel's RTT when it is
				// smaller (docs/modes.md, "Mode changes") within its first
				// window. So probe again, up to three times; a path that
				// really is longer keeps failing, as does a probe that
				// misreads a path the host did not disturb.
				hostDelay := res.Path.RTT - cnt.SRTT
				if attempt < 3 && cerr == nil && cnt.SRTT > 0 && cnt.SRTT <= c.rttHi && res.Path.RTT > c.rttHi && hostDelay > time.Millisecond {
					t.Logf("attempt %d: the pings read %v, the kernel %v: this host delayed them by %v; probing again", attempt, res.Path.RTT, cnt.SRTT, hostDelay)
					continue
				}
				// The lab's shaper is user-space code sharing two cores
				// with both ends' TLS: when it hands packets over later,
				// on average, than the one-way delay it emulates, the
				// link the probe measured was not the profile's (the dc
				// link then carried 0.4-1.2 Gbit/s where plain TCP, alone,
				// gets 3.5-4). The product measured what it was given;
				// probe again, up to three times.
				if m := Classify(res.Path, Thresholds{}); attempt < 3 && m != c.want && late > p.RTT/2 {
					t.Logf("attempt %d: classified %v at %v while the lab's packets were %v late on average (one-way delay %v): the lab was overloaded; probing again", attempt, m, res.Path, late, p.RTT/2)
					continue
				}
				break
			}
			path := res.Path
			mode := Classify(path, Thresholds{})
			t.Logf("%s (%s): measured %v in %v, %d rounds, loss known %v: %v", p.Name, p.Summary(), path, res.Elapsed, len(res.Rounds), res.LossKnown, mode)
			if path.RTT < c.rttLo || path.RTT > c.rttHi {
				t.Errorf("RTT %v outside [%v, %v]", path.RTT, c.rttLo, c.rttHi)
			}
			// A thin lossy path rarely gives the probe enough steady-state
			// segments in its second (docs/modes.md); when it does, the
			// figure must be right.
			if c.checkLoss && res.LossKnown && (path.Loss < c.lossLo || path.Loss > c.lossHi) {
				t.Errorf("loss %v, want within [%v, %v]", path.Loss, c.lossLo, c.lossHi)
			}
			if !c.checkLoss && path.Loss > 0.002 {
				t.Errorf("loss %v on a link without random loss: the probe's own slow-start drops were counted", path.Loss)
			}
			if c.bwLo == 0 {
				if mode != c.want {
					t.Errorf("classified %v, want %v", mode, c.want)
				}
				return
			}
			// What the lab delivers depends on this machine's load (its
			// shaper is user-space code): compare with a bulk TCP transfer
			// measured now, and expect the mode of that link.
			// It is taken before and after the probe, and the larger
			// stands for the link: a load that slows one of them
			// understates the lab, never overstates it. (One reference
			// taken only after a 60 ms probe read 789 Mbit/s with the
			// shaper never idle, after a 2.37 Gbit/s probe.)
			goodput := max(refBefore, referenceGoodput(ctx, t, l, a, b))
			// A short reference transfer on a long path may not reach the
			// link's rate; the probe may then read above it, but never
			// above the link itself.
			if path.Bandwidth < c.bwLo*goodput || path.Bandwidth > 1.5*max(goodput, float64(p.Rate)/8) {
				t.Errorf("probe bandwidth %s against %s of bulk TCP", FormatRate(path.Bandwidth), FormatRate(goodput))
			}
			want := Classify(Path{RTT: path.RTT, Bandwidth: goodput, Loss: path.Loss}, Thresholds{})
			if goodput >= 0.8*float64(p.Rate)/8 && want != c.want {
				t.Errorf("the lab delivered its rate but the reference classifies as %v", want)
			}
			if want != c.want {
				t.Logf("the lab delivered %s of its %v: expecting %v", FormatRate(goodput), p.Rate, want)
			}
			if mode != want {
				t.Errorf("classified %v, want %v", mode, want)
			}
			if res.Elapsed > 5*time.Second {
				t.Errorf("probe took %v", res.Elapsed)
			}
		})
	}
}

// referenceGoodput measures a bulk TCP transfer of two streams from a to b
// in the lab, in bytes per second of goodput.
func referenceGoodput(ctx context.Context, t *testing.T, l *wanlab.Lab, a, b *wanlab.Host) float64 {
	t.Helper()
	ref, err := wanlab.MeasureThroughput(ctx, l, a, b, wanlab.ThroughputOptions{Warmup: 300 * time.Millisecond, Duration: 700 * time.Millisecond, Streams: 2})
	if err != nil {
		t.Fatal(err)
	}
	goodput := float64(ref.Goodput) / 8
	t.Logf("bulk TCP reference: %s goodput (%v on the wire, idle %.0f%%)", FormatRate(goodput), ref.Wire, ref.Idle*100)
	return goodput
}
