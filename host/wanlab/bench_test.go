//go:build linux

package wanlab

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkLinkPath is the shaper's cost per packet between the two TUN
// system calls: admission, queueing, timer arming and delivery. It needs
// no root.
func BenchmarkLinkPath(b *testing.B) {
	h0, h1 := &Host{Name: "h0"}, &Host{Name: "h1"}
	k, err := newLink(h0, h1, LinkParams{Rate: 10 * Gbps, Delay: 250 * time.Microsecond, QueueDelay: time.Millisecond}, 1)
	if err != nil {
		b.Fatal(err)
	}
	defer k.close()
	pool := newPacketPool()
	batch := make([]*packet, 0, 64)
	now := int64(0)
	b.ReportAllocs()
	for b.Loop() {
		now += 1200 // 1500-byte packets at 10 Gbit/s
		p := pool.get(1)
		p.n = 1500
		k.enqueue(p, now, pool)
		batch = k.due(now, batch[:0], pool)
		for i, q := range batch {
			pool.put(q)
			batch[i] = nil
		}
	}
}

// BenchmarkForwarder measures the unshaped forwarder with one TCP stream
// at each MTU, the baseline a profile's rate must stay under.
func BenchmarkForwarder(b *testing.B) {
	for _, mtu := range []int{1500, 9000, 64000} {
		b.Run(fmt.Sprintf("mtu=%d", mtu), func(b *testing.B) {
			l := NewTest(b, Config{Profile: Profile{Name: "unshaped", MTU: mtu}})
			for b.Loop() {
				r, err := MeasureThroughput(b.Context(), l, l.Host(0), l.Host(1), ThroughputOptions{Warmup: 500 * time.Millisecond, Duration: 2 * time.Second})
				if err != nil {
					b.Fatal(err)
				}
				st, _ := l.LinkStats(l.Host(0), l.Host(1))
				b.ReportMetric(float64(r.Wire)/1e9, "gbit/s")
				b.ReportMetric(float64(st.LateMean)/1e3, "late_us")
			}
		})
	}
}

// BenchmarkSelfTest runs the self-test of every profile and reports
// measured/configured ratios. Run it with -benchtime=1x: one self-test
// takes several seconds.
func BenchmarkSelfTest(b *testing.B) {
	for _, p := range Profiles() {
		b.Run(p.Name, func(b *testing.B) {
			l := NewTest(b, Config{Profile: p})
			for b.Loop() {
				rep, err := SelfTest(b.Context(), l, SelfTestOptions{})
				if err != nil {
					b.Fatal(err)
				}
				for _, c := range rep.Checks {
					switch {
					case c.Name == "rtt median":
						b.ReportMetric(c.Ratio(), "rtt_ratio")
					case c.Name == "rate (wire, tcp bulk)" && c.Configured > 0:
						b.ReportMetric(c.Ratio(), "rate_ratio")
					case c.Name == "loss one-way" && c.Configured > 0:
						b.ReportMetric(c.Ratio(), "loss_ratio")
					}
				}
				var late time.Duration
				for _, s := range l.Stats().Links {
					late = max(late, s.LateMax)
				}
				b.ReportMetric(float64(late)/1e3, "late_max_us")
				b.ReportMetric(rep.Throughput.Idle*100, "idle_pct")
				if !rep.OK() {
					b.Errorf("self-test of %s failed", p.Name)
				}
			}
		})
	}
}
