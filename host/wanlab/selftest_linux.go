//go:build linux

package wanlab

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// Tolerances of the self-test. The forwarder adds a small fixed latency
// (two TUN crossings and goroutine wake-ups per direction, about 0.1-0.3 ms
// per round trip on an idle 2-vCPU machine); TCP does not fill a link
// exactly; loss is judged against a binomial band.
const (
	rttSlackAbove = 600 * time.Microsecond // fixed latency the lab may add
	rttSlackBelow = 100 * time.Microsecond
	rttSlackRel   = 0.05 // plus 5 % of the configured RTT either way
	rateLow       = 0.85 // wire rate / configured rate, TCP bulk transfer
	rateHigh      = 1.02
	lossSigmas    = 4.0
	lossSlack     = 0.002
	// stepMargin widens the exclusion around a step change of a scheduled
	// profile (see stepRTTChecks) for the schedule's timer being late.
	stepMargin = 30 * time.Millisecond
)

// SelfTestOptions tune the self-test; zero fields take the defaults.
type SelfTestOptions struct {
	Probes        int           // RTT probes, default 40 (a full schedule cycle when the profile has steps)
	ProbeInterval time.Duration // default 25 ms
	LossProbes    int           // default 4000 when the profile has loss, else 1000
	Warmup        time.Duration // TCP warm-up, default max(1 s, 10 RTT)
	Duration      time.Duration // TCP measured interval, default 3 s
	// Congestion is the TCP congestion control of the bulk transfer,
	// default "bbr", which fills a long path within a second where CUBIC
	// needs many seconds to regrow after its first loss (measured here:
	// CUBIC reached 46-58 % of 100 Mbit/s at 60 ms in 3 s). When the
	// kernel lacks it the system default is used; the report names it.
	Congestion string
	// Streams is the number of parallel TCP connections, default 1.
	Streams  int
	SkipRate bool
}

// Check is one measured quantity against its configured value.
type Check struct {
	Name       string
	Unit       string
	Configured float64
	Measured   float64
	// Low and High bound the accepted Measured when Judged.
	Low, High float64
	Judged    bool
	OK        bool
	Note      string
}

// Ratio is Measured/Configured, or 0 when nothing was configured.
func (c Check) Ratio() float64 {
	if c.Configured == 0 {
		return 0
	}
	return c.Measured / c.Configured
}

// Report is the outcome of a self-test.
type Report struct {
	Lab         string
	Profile     Profile
	Checks      []Check
	RTT         RTTResult
	Loss        LossResult
	Throughput  ThroughputResult
	KernelDrops uint64
	Elapsed     time.Duration
}

// OK reports whether every judged check passed.
func (r *Report) OK() bool {
	for _, c := range r.Checks {
		if c.Judged && !c.OK {
			return false
		}
	}
	return true
}

// Check returns the named check.
func (r *Report) Check(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// WriteText prints the report as a table.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "profile %s (%s), lab %s\n", r.Profile.Name, r.Profile.Summary(), r.Lab)
	fmt.Fprintf(w, "  %-22s %14s %14s %8s  %-24s %s\n", "check", "configured", "measured", "ratio", "accepted", "result")
	for _, c := range r.Checks {
		result := "info"
		if c.Judged {
			result = "ok"
			if !c.OK {
				result = "FAIL"
			}
		}
		accepted := "-"
		if c.Judged {
			accepted = fmt.Sprintf("%s..%s", fmtVal(c.Low), fmtVal(c.High))
		}
		ratio := "-"
		if c.Configured != 0 {
			ratio = fmt.Sprintf("%.3f", c.Ratio())
		}
		fmt.Fprintf(w, "  %-22s %14s %14s %8s  %-24s %s", c.Name, fmtVal(c.Configured)+" "+c.Unit, fmtVal(c.Measured)+" "+c.Unit, ratio, accepted, result)
		if c.Note != "" {
			fmt.Fprintf(w, "  (%s)", c.Note)
		}
		fmt.Fprintln(w)
	}
	tp := r.Throughput
	if tp.Interval > 0 {
		fmt.Fprintf(w, "  tcp: %d x %s, goodput %v, %d retransmits, srtt %v, bottleneck idle %.1f %%\n", tp.Streams, tp.Congestion, tp.Goodput, tp.Retransmits, tp.SmoothedRTT, tp.Idle*100)
	}
	fmt.Fprintf(w, "  kernel TUN drops %d, took %v: %s\n", r.KernelDrops, r.Elapsed.Round(time.Millisecond), map[bool]string{true: "PASS", false: "FAIL"}[r.OK()])
}

func fmtVal(v float64) string {
	return trimFloat(math.Round(v*1000) / 1000)
}

func rttCheck(name string, cfg time.Duration, measured time.Duration, jitter time.Duration) Check {
	c := Check{Name: name, Unit: "ms", Configured: ms(cfg), Measured: ms(measured), Judged: true}
	rel := time.Duration(float64(cfg) * rttSlackRel)
	c.Low = ms(cfg - rttSlackBelow - rel - jitter)
	c.High = ms(cfg + rttSlackAbove + rel + jitter)
	c.OK = measured > 0 && c.Measured >= c.Low && c.Measured <= c.High
	if measured == 0 {
		c.Note = "no replies"
	}
	return c
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// SelfTest measures the lab between its first two hosts against its own
// settings: RTT by UDP probes to an echo, one-way loss by a probe train,
// and the rate by a TCP bulk transfer. The rate is judged only on a fixed,
// loss-free profile: under loss or a changing rate TCP, not the lab, sets
// the pace.
func SelfTest(ctx context.Context, l *Lab, opts SelfTestOptions) (*Report, error) {
	start := time.Now()
	p := l.Profile()
	a, b := l.Host(0), l.Host(1)
	ab, err := l.Link(a, b)
	if err != nil {
		return nil, fmt.Errorf("self-test: %w", err)
	}
	ba, err := l.Link(b, a)
	if err != nil {
		return nil, fmt.Errorf("self-test: %w", err)
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = 25 * time.Millisecond
	}
	if opts.Probes <= 0 {
		opts.Probes = 40
		if cycle := scheduleCycle(p); cycle > 0 {
			opts.Probes = int((cycle + time.Second) / opts.ProbeInterval)
		}
	}
	if opts.LossProbes <= 0 {
		opts.LossProbes = 1000
		if ab.Loss > 0 {
			opts.LossProbes = 4000
		}
	}
	if opts.Congestion == "" {
		opts.Congestion = "bbr"
	}
	if opts.Duration <= 0 {
		opts.Duration = 3 * time.Second
	}
	if opts.Warmup <= 0 {
		opts.Warmup = max(time.Second, 10*(ab.Delay+ba.Delay))
	}
	rep := &Report{Lab: l.Name(), Profile: p}
	maxRTT := ab.Delay + ba.Delay
	for _, s := range p.Steps {
		maxRTT = max(maxRTT, s.RTT)
	}
	grace := 2*maxRTT + 300*time.Millisecond

	rep.RTT, err = MeasureRTT(ctx, l, a, b, opts.Probes, opts.ProbeInterval, grace)
	if err != nil {
		return nil, fmt.Errorf("self-test: %w", err)
	}
	// Both directions may lose a probe or its reply.
	roundTripLoss := 1 - (1-ab.Loss)*(1-ba.Loss)
	if len(p.Steps) > 1 {
		rep.Checks = append(rep.Checks, stepRTTChecks(p, l.History(), rep.RTT, ab.Jitter+ba.Jitter)...)
	} else {
		rep.Checks = append(rep.Checks, rttCheck("rtt median", ab.Delay+ba.Delay, rep.RTT.Median, (ab.Jitter+ba.Jitter)/2))
	}
	rep.Checks = append(rep.Checks, lossCheck("rtt probes lost", roundTripLoss, opts.Probes, opts.Probes-rep.RTT.Received, false))

	rep.Loss, err = MeasureLoss(ctx, l, a, b, opts.LossProbes, time.Second, grace)
	if err != nil {
		return nil, fmt.Errorf("self-test: %w", err)
	}
	rep.Checks = append(rep.Checks, lossCheck("loss one-way", ab.Loss, rep.Loss.Sent, rep.Loss.Sent-rep.Loss.Received, true))

	if !opts.SkipRate {
		rep.Throughput, err = MeasureThroughput(ctx, l, a, b, ThroughputOptions{Warmup: opts.Warmup, Duration: opts.Duration, Streams: opts.Streams, Congestion: opts.Congestion})
		if err != nil {
			return nil, fmt.Errorf("self-test: %w", err)
		}
		rate, _ := l.Link(a, b)
		c := Check{Name: "rate (wire, tcp bulk)", Unit: "Mbit/s", Configured: float64(rate.Rate) / 1e6, Measured: float64(rep.Throughput.Wire) / 1e6}
		switch {
		case rate.Rate == 0:
			c.Note = "unlimited rate: this is the forwarder's capacity"
		case len(p.Steps) > 1:
			c.Configured = 0
			c.Note = "the rate changes during the run: not judged"
		case rate.Loss > 0 || ba.Loss > 0:
			c.Note = "lossy link: TCP's loss response sets the pace, not judged"
		default:
			c.Judged = true
			c.Low, c.High = c.Configured*rateLow, c.Configured*rateHigh
			c.OK = c.Measured >= c.Low && c.Measured <= c.High
		}
		if used, marks, err := tcpMemory(); err == nil && used > marks[0] {
			// Seen here: orphaned sockets of other tests held 1.1 GB and
			// a 3 Gbit/s link measured 0.2 of its rate.
			note := fmt.Sprintf("TCP memory in use %d pages is above tcp_mem's low mark %d: the kernel clamps windows", used, marks[0])
			c.Note = strings.TrimPrefix(c.Note+"; "+note, "; ")
		}
		rep.Checks = append(rep.Checks, c)
	}
	for _, h := range []*Host{a, b} {
		if d, err := l.KernelDrops(h); err == nil {
			rep.KernelDrops += d
		}
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// tcpMemory reads the machine's TCP memory use and tcp_mem marks, pages.
func tcpMemory() (int64, [3]int64, error) {
	st, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, [3]int64{}, fmt.Errorf("read sockstat: %w", err)
	}
	used, err := parseSockstatTCPMem(st)
	if err != nil {
		return 0, [3]int64{}, err
	}
	tm, err := os.ReadFile("/proc/sys/net/ipv4/tcp_mem")
	if err != nil {
		return 0, [3]int64{}, fmt.Errorf("read tcp_mem: %w", err)
	}
	marks, err := parseTCPMem(tm)
	return used, marks, err
}

// lossCheck judges lost out of n against probability p with a binomial
// band of lossSigmas standard deviations plus lossSlack.
func lossCheck(name string, p float64, n, lost int, judged bool) Check {
	c := Check{Name: name, Unit: "%", Configured: p * 100, Judged: judged || p == 0}
	if n > 0 {
		c.Measured = float64(lost) / float64(n) * 100
	}
	sigma := math.Sqrt(p * (1 - p) / float64(max(n, 1)))
	band := lossSigmas*sigma + lossSlack
	c.Low, c.High = math.Max(0, p-band)*100, (p+band)*100
	c.OK = c.Measured >= c.Low && c.Measured <= c.High
	c.Note = fmt.Sprintf("%d of %d", lost, n)
	return c
}

func scheduleCycle(p Profile) time.Duration {
	if len(p.Steps) < 2 {
		return 0
	}
	var d time.Duration
	for _, s := range p.Steps {
		d += s.For
	}
	return d
}

// stepRTTChecks judges the RTT of each step of a scheduled profile from
// the probes sent while that step was in force. Probes near a change are
// left out: one whose round trip spans the change sees both steps, and for
// up to the longest RTT after a change packets may still queue behind
// those sent under the old, longer delay, since they may not overtake them.
func stepRTTChecks(p Profile, hist []StepChange, r RTTResult, jitter time.Duration) []Check {
	var settle time.Duration
	for _, s := range p.Steps {
		settle = max(settle, s.RTT)
	}
	settle += stepMargin
	byStep := make([][]time.Duration, len(p.Steps))
	for _, pr := range r.Probes {
		if pr.RTT == 0 {
			continue
		}
		next := slices.IndexFunc(hist, func(c StepChange) bool { return c.At.After(pr.Sent) })
		// The step in force is the last change at or before the send.
		cur := len(hist) - 1
		if next >= 0 {
			cur = next - 1
		}
		if cur < 0 || pr.Sent.Sub(hist[cur].At) < settle {
			continue
		}
		if next >= 0 && hist[next].At.Sub(pr.Sent) < pr.RTT+stepMargin {
			continue
		}
		if s := hist[cur].Step; s >= 0 && s < len(byStep) {
			byStep[s] = append(byStep[s], pr.RTT)
		}
	}
	var checks []Check
	for i, rtts := range byStep {
		var res RTTResult
		summarizeRTT(&res, rtts)
		c := rttCheck(fmt.Sprintf("rtt median step %d", i), p.Steps[i].RTT, res.Median, jitter/2)
		c.Note = fmt.Sprintf("%d probes", len(rtts))
		if len(rtts) < 3 {
			c.OK = false
			c.Note = fmt.Sprintf("only %d probes in the step", len(rtts))
		}
		checks = append(checks, c)
	}
	return checks
}
