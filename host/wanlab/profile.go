package wanlab

import (
	"errors"
	"fmt"
	"github.com/dwcp/dwcp/host/internal/units"
	"math"
	"strconv"
	"strings"
	"time"
)

// Rate is a link rate in bits per second of IP packets (headers included,
// no link-layer framing). Zero means unlimited.
type Rate int64

// Common rates.
const (
	Kbps Rate = 1000
	Mbps Rate = 1000 * Kbps
	Gbps Rate = 1000 * Mbps
)

// String prints the rate with the largest unit that keeps it readable.
func (r Rate) String() string {
	switch {
	case r <= 0:
		return "unlimited"
	case r >= Gbps:
		return trimFloat(float64(r)/float64(Gbps)) + " Gbit/s"
	case r >= Mbps:
		return trimFloat(float64(r)/float64(Mbps)) + " Mbit/s"
	case r >= Kbps:
		return trimFloat(float64(r)/float64(Kbps)) + " kbit/s"
	}
	return strconv.FormatInt(int64(r), 10) + " bit/s"
}

func trimFloat(f float64) string {
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// ErrBadValue is wrapped by every parse and validation error of this package.
var ErrBadValue = errors.New("wanlab: bad value")

// maxRate bounds rates so that byte and nanosecond arithmetic stays exact.
const maxRate = 1000 * Gbps

// ParseRate reads a rate such as "100mbit", "1.5Gbit/s", "800k", "10g" or
// "250000000" (bits per second). "0" and "unlimited" mean no limit.
func ParseRate(s string) (Rate, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "unlimited" || t == "0" {
		return 0, nil
	}
	bits, err := units.ParseBits(t)
	if err != nil {
		return 0, fmt.Errorf("parse rate %q: %w", s, ErrBadValue)
	}
	if bits < 0 || bits > float64(maxRate) {
		return 0, fmt.Errorf("parse rate %q: out of range 0..%v: %w", s, maxRate, ErrBadValue)
	}
	return Rate(math.Round(bits)), nil
}

// ParseLoss reads a loss probability: "1%", "0.5 %" or a fraction "0.01".
func ParseLoss(s string) (float64, error) {
	t := strings.TrimSpace(s)
	scale := 1.0
	if strings.HasSuffix(t, "%") {
		t = strings.TrimSpace(strings.TrimSuffix(t, "%"))
		scale = 100
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil {
		return 0, fmt.Errorf("parse loss %q: %w", s, ErrBadValue)
	}
	v /= scale
	if math.IsNaN(v) || v < 0 || v > 1 {
		return 0, fmt.Errorf("parse loss %q: not within 0..100%%: %w", s, ErrBadValue)
	}
	return v, nil
}

// maxQueueBytes bounds a queue so that a typo cannot ask for all memory.
const maxQueueBytes = 1 << 30

// ParseQueue reads a queue size given either as a time at the link rate
// ("50ms") or as bytes ("256KiB", "1MB", "1500"). Exactly one of the results
// is non-zero unless the input is "0".
func ParseQueue(s string) (bytes int64, delay time.Duration, err error) {
	t := strings.TrimSpace(s)
	if t == "0" {
		return 0, 0, nil
	}
	if d, derr := time.ParseDuration(t); derr == nil {
		if d <= 0 || d > maxDelay {
			return 0, 0, fmt.Errorf("parse queue %q: duration out of range (0, %v]: %w", s, maxDelay, ErrBadValue)
		}
		return 0, d, nil
	}
	lower := strings.ToLower(t)
	mult := int64(1)
	for _, u := range []struct {
		suf  string
		mult int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"k", 1 << 10}, {"m", 1 << 20}, {"b", 1}} {
		if strings.HasSuffix(lower, u.suf) {
			lower = strings.TrimSpace(strings.TrimSuffix(lower, u.suf))
			mult = u.mult
			break
		}
	}
	v, perr := strconv.ParseFloat(lower, 64)
	if perr != nil {
		return 0, 0, fmt.Errorf("parse queue %q: want a duration or a byte size: %w", s, ErrBadValue)
	}
	b := v * float64(mult)
	if math.IsNaN(b) || b < 1 || b > maxQueueBytes {
		return 0, 0, fmt.Errorf("parse queue %q: bytes out of range 1..%d: %w", s, maxQueueBytes, ErrBadValue)
	}
	return int64(math.Round(b)), 0, nil
}

// maxDelay bounds delays, jitter and schedule steps.
const maxDelay = 10 * time.Second

// LinkParams shape one direction of a link.
type LinkParams struct {
	// Delay is the one-way propagation delay added after the queue.
	Delay time.Duration
	// Jitter adds a uniform random offset in [-Jitter, +Jitter] to each
	// packet's delay. Packets stay in order unless Reorder is set, so a
	// packet that would overtake its predecessor waits for it instead.
	Jitter  time.Duration
	Reorder bool
	// Rate is the bottleneck's rate; zero means unlimited.
	Rate Rate
	// QueueBytes is the drop-tail queue in front of the bottleneck. When it
	// is zero, QueueDelay gives it as time at Rate; when both are zero it is
	// one bandwidth-delay product (2*Delay at Rate), at least 64 KiB.
	QueueBytes int64
	QueueDelay time.Duration
	// Loss is the probability that a packet is lost after the queue.
	Loss float64
}

// Validate reports the first out-of-range field.
func (p LinkParams) Validate() error {
	switch {
	case p.Delay < 0 || p.Delay > maxDelay:
		return fmt.Errorf("link delay %v: out of range 0..%v: %w", p.Delay, maxDelay, ErrBadValue)
	case p.Jitter < 0 || p.Jitter > maxDelay:
		return fmt.Errorf("link jitter %v: out of range 0..%v: %w", p.Jitter, maxDelay, ErrBadValue)
	case p.Rate < 0 || p.Rate > maxRate:
		return fmt.Errorf("link rate %d: out of range 0..%d: %w", int64(p.Rate), int64(maxRate), ErrBadValue)
	case p.QueueBytes < 0 || p.QueueBytes > maxQueueBytes:
		return fmt.Errorf("link queue %d bytes: out of range 0..%d: %w", p.QueueBytes, maxQueueBytes, ErrBadValue)
	case p.QueueDelay < 0 || p.QueueDelay > maxDelay:
		return fmt.Errorf("link queue %v: out of range 0..%v: %w", p.QueueDelay, maxDelay, ErrBadValue)
	case !(p.Loss >= 0 && p.Loss <= 1):
		return fmt.Errorf("link loss %v: out of range 0..1: %w", p.Loss, ErrBadValue)
	}
	return nil
}

// queueLimit is the queue size in bytes that the shaper enforces.
func (p LinkParams) queueLimit() int64 {
	if p.QueueBytes > 0 {
		return p.QueueBytes
	}
	d := p.QueueDelay
	if d == 0 {
		d = 2 * p.Delay
	}
	b := int64(float64(p.Rate) / 8 * d.Seconds())
	if p.QueueDelay == 0 && b < 64<<10 {
		b = 64 << 10
	}
	return min(max(b, 1), maxQueueBytes)
}

func (p LinkParams) String() string {
	s := fmt.Sprintf("delay %v, rate %v, loss %s, queue %s", p.Delay, p.Rate, formatLoss(p.Loss), formatQueue(p.QueueBytes, p.QueueDelay))
	if p.Jitter > 0 {
		s += fmt.Sprintf(", jitter ±%v", p.Jitter)
		if p.Reorder {
			s += " (reordering)"
		}
	}
	return s
}

func formatLoss(l float64) string {
	return trimFloat(math.Round(l*1e6)/1e4) + "%"
}

func formatQueue(b int64, d time.Duration) string {
	switch {
	case b > 0:
		return fmt.Sprintf("%d B", b)
	case d > 0:
		return d.String()
	}
	return "BDP"
}

// Step is one stage of a profile's schedule.
type Step struct {
	For  time.Duration
	RTT  time.Duration
	Rate Rate
}

// ScheduledCut drops every packet in both directions for For, starting
// After the lab comes up.
type ScheduledCut struct {
	After, For time.Duration
}

// Profile names a link: the same parameters in both directions.
type Profile struct {
	Name        string
	Description string
	RTT         time.Duration
	Jitter      time.Duration // per direction
	Reorder     bool
	Rate        Rate
	Loss        float64 // per direction
	// MTU of the TUN devices. The forwarder's cost is per packet, so fast
	// profiles use a large MTU to reach their rate.
	MTU        int
	QueueBytes int64
	QueueDelay time.Duration
	// Steps, when set, cycle for as long as the lab runs: each step sets
	// RTT and Rate of both directions for its duration. Steps[0] is in
	// force when the lab comes up.
	Steps []Step
	Cuts  []ScheduledCut
}

// MTU bounds: IPv4's minimum and the largest a TUN device takes.
const (
	minMTU = 576
	maxMTU = 65535
)

// Validate reports the first out-of-range field.
func (p Profile) Validate() error {
	if p.MTU < minMTU || p.MTU > maxMTU {
		return fmt.Errorf("profile %q: mtu %d out of range %d..%d: %w", p.Name, p.MTU, minMTU, maxMTU, ErrBadValue)
	}
	if p.RTT < 0 || p.RTT > 2*maxDelay {
		return fmt.Errorf("profile %q: rtt %v out of range: %w", p.Name, p.RTT, ErrBadValue)
	}
	if err := p.Link().Validate(); err != nil {
		return fmt.Errorf("profile %q: %w", p.Name, err)
	}
	for i, s := range p.Steps {
		if s.For < 10*time.Millisecond || s.For > time.Hour || s.RTT < 0 || s.RTT > 2*maxDelay || s.Rate < 0 || s.Rate > maxRate {
			return fmt.Errorf("profile %q: step %d (%v, rtt %v, rate %v) out of range: %w", p.Name, i, s.For, s.RTT, s.Rate, ErrBadValue)
		}
	}
	for i, c := range p.Cuts {
		if c.After < 0 || c.For <= 0 || c.After > 24*time.Hour || c.For > 24*time.Hour {
			return fmt.Errorf("profile %q: cut %d (after %v for %v) out of range: %w", p.Name, i, c.After, c.For, ErrBadValue)
		}
	}
	return nil
}

// Link returns the parameters of each direction when the lab comes up.
func (p Profile) Link() LinkParams {
	rtt, rate := p.RTT, p.Rate
	if len(p.Steps) > 0 {
		rtt, rate = p.Steps[0].RTT, p.Steps[0].Rate
	}
	return LinkParams{
		Delay:      rtt / 2,
		Jitter:     p.Jitter,
		Reorder:    p.Reorder,
		Rate:       rate,
		QueueBytes: p.QueueBytes,
		QueueDelay: p.QueueDelay,
		Loss:       p.Loss,
	}
}

// Summary is a one-line description of the profile's parameters.
func (p Profile) Summary() string {
	s := fmt.Sprintf("RTT %v, %v, loss %s, MTU %d, queue %s", p.RTT, p.Rate, formatLoss(p.Loss), p.MTU, formatQueue(p.QueueBytes, p.QueueDelay))
	if p.Jitter > 0 {
		s += fmt.Sprintf(", jitter ±%v", p.Jitter)
	}
	if len(p.Steps) > 0 {
		parts := make([]string, len(p.Steps))
		for i, st := range p.Steps {
			parts[i] = fmt.Sprintf("%v: %v/%v", st.For, st.RTT, st.Rate)
		}
		s += ", cycling " + strings.Join(parts, " -> ")
	}
	return s
}

// Profiles returns the built-in profiles. The rates were chosen so that the
// shaper reaches them on a 2-vCPU machine shared with other work; see
// docs/wanlab.md for what was measured.
func Profiles() []Profile {
	return []Profile{
		{
			Name: "dc",
			Description: "datacenter: 0.5 ms RTT, 4 Gbit/s rather than 10, MTU 64000. On a 2-vCPU VM the " +
				"forwarder moves 15 Gbit/s unshaped at this MTU, but one TCP stream at 0.5 ms RTT " +
				"filled a 10 Gbit/s link to 7.4 and a 6 Gbit/s one to 4.7-5.0: 4 Gbit/s is the rate " +
				"it fills reliably on a loaded machine.",
			RTT:        500 * time.Microsecond,
			Rate:       4 * Gbps,
			MTU:        64000,
			QueueBytes: 1 << 20,
		},
		{
			Name:        "wan-100ms-1g",
			Description: "long-haul WAN: 100 ms RTT, 1 Gbit/s, queue of half a BDP, MTU 9000.",
			RTT:         100 * time.Millisecond,
			Rate:        1 * Gbps,
			MTU:         9000,
			QueueDelay:  50 * time.Millisecond,
		},
		{
			Name:        "wan-50ms-5g",
			Description: "fat WAN: 50 ms RTT, 5 Gbit/s, queue of half a BDP, MTU 64000 (the forwarder's cost is per packet).",
			RTT:         50 * time.Millisecond,
			Rate:        5 * Gbps,
			MTU:         64000,
			QueueDelay:  25 * time.Millisecond,
		},
		{
			Name:        "internet-lossy",
			Description: "lossy internet path: 80 ms RTT, 200 Mbit/s, 1 % random loss each way, ±1 ms jitter, MTU 1500.",
			RTT:         80 * time.Millisecond,
			Jitter:      time.Millisecond,
			Rate:        200 * Mbps,
			Loss:        0.01,
			MTU:         1500,
			QueueDelay:  40 * time.Millisecond,
		},
		{
			Name: "variable",
			Description: "a path that alternates between a fat phase (1 s of 2 Gbit/s at 20 ms: the CPU is the " +
				"bottleneck, the lightest codec carries the most) and a thin one (5 s of 150 Mbit/s at 40 ms: the " +
				"link is, and strong compression carries the most), MTU 9000. The RTT only doubles: TCP BBR keeps " +
				"its minimum RTT for 10 s and caps what is in flight at twice the bandwidth times it, so a longer " +
				"jump would starve every flow for seconds after it (docs/wanlab.md).",
			RTT:        20 * time.Millisecond,
			Rate:       2 * Gbps,
			MTU:        9000,
			QueueDelay: 50 * time.Millisecond,
			Steps: []Step{
				{For: time.Second, RTT: 20 * time.Millisecond, Rate: 2 * Gbps},
				{For: 5 * time.Second, RTT: 40 * time.Millisecond, Rate: 150 * Mbps},
			},
		},
		{
			Name:        "internet",
			Description: "a small, slow internet path for demos: 60 ms RTT, 100 Mbit/s, one BDP of queue, MTU 1500.",
			RTT:         60 * time.Millisecond,
			Rate:        100 * Mbps,
			MTU:         1500,
			QueueDelay:  60 * time.Millisecond,
		},
	}
}

// LookupProfile returns the built-in profile with that name.
func LookupProfile(name string) (Profile, error) {
	names := make([]string, 0, 8)
	for _, p := range Profiles() {
		if p.Name == name {
			return p, nil
		}
		names = append(names, p.Name)
	}
	return Profile{}, fmt.Errorf("lookup profile %q: want one of %s: %w", name, strings.Join(names, ", "), ErrBadValue)
}

// ErrUnavailable is wrapped by Available's error when this machine cannot
// run a lab (not root, no /dev/net/tun).
var ErrUnavailable = errors.New("wanlab: lab unavailable")
