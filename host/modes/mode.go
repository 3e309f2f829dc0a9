package modes

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Mode is what a migration optimises for on a given path.
type Mode uint8

const (
	// Datacenter: short RTT, fat link; throughput first (zero-only page
	// stage, s2 or no codec, many streams).
	Datacenter Mode = iota + 1
	// Hybrid: between the two; the codec level follows the bottleneck.
	Hybrid
	// Internet: long RTT, thin or lossy link; bytes first (every page-stage
	// technique, strong zstd).
	Internet
)

// Modes lists the modes in order of increasing distance.
var Modes = []Mode{Datacenter, Hybrid, Internet}

// ErrBadConfig is wrapped by every error about a value read from a file,
// a flag or a caller's configuration.
var ErrBadConfig = errors.New("modes: bad configuration")

func (m Mode) String() string {
	switch m {
	case Datacenter:
		return "datacenter"
	case Hybrid:
		return "hybrid"
	case Internet:
		return "internet"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Valid reports whether m is one of the three modes.
func (m Mode) Valid() bool { return m >= Datacenter && m <= Internet }

// ParseMode reads a mode name as printed by String ("dc" and "wan" are
// accepted as short forms).
func ParseMode(s string) (Mode, error) {
	switch s {
	case "datacenter", "dc":
		return Datacenter, nil
	case "hybrid":
		return Hybrid, nil
	case "internet", "wan":
		return Internet, nil
	}
	return 0, fmt.Errorf("parse mode %q: want datacenter, hybrid or internet: %w", s, ErrBadConfig)
}

// MarshalText implements encoding.TextMarshaler (config and cache files).
func (m Mode) MarshalText() ([]byte, error) {
	if !m.Valid() {
		return nil, fmt.Errorf("marshal %v: %w", m, ErrBadConfig)
	}
	return []byte(m.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseMode(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Path is what is known about the network path to a peer.
type Path struct {
	// RTT is the round-trip time; 0 means unknown.
	RTT time.Duration `json:"rtt"`
	// Bandwidth is the bottleneck rate in payload bytes per second; 0 means
	// unknown.
	Bandwidth float64 `json:"bandwidth"`
	// Loss is the packet loss rate (0..1); 0 also when unknown.
	Loss float64 `json:"loss"`
	// When the measurement was taken.
	When time.Time `json:"when"`
	// Source says where the numbers come from: "probe", "cache",
	// "passive", "config".
	Source string `json:"source"`
	// HostBound: the hosts, not the link, set the measured bandwidth. The
	// kernel saw the sender mostly without data to send or stalled by the
	// receiver's window (SendTimes), so Bandwidth is what the hosts could
	// push through DWCP's transport, a lower bound of the link's rate.
	HostBound bool `json:"host_bound,omitempty"`
}

// Validate rejects numbers no measurement can produce, so that a damaged
// cache file or a hostile peer cannot steer the classification with NaN.
func (p Path) Validate() error {
	switch {
	case p.RTT < 0 || p.RTT > time.Minute:
		return fmt.Errorf("path rtt %v: out of range 0..1m: %w", p.RTT, ErrBadConfig)
	case !(p.Bandwidth >= 0 && p.Bandwidth <= maxBandwidth):
		return fmt.Errorf("path bandwidth %v: out of range 0..%g: %w", p.Bandwidth, float64(maxBandwidth), ErrBadConfig)
	case !(p.Loss >= 0 && p.Loss <= 1):
		return fmt.Errorf("path loss %v: out of range 0..1: %w", p.Loss, ErrBadConfig)
	case len(p.Source) > 64:
		return fmt.Errorf("path source of %d bytes: %w", len(p.Source), ErrBadConfig)
	}
	return nil
}

func (p Path) String() string {
	bw := FormatRate(p.Bandwidth)
	if p.HostBound {
		bw = "at least " + bw + " (host-bound)"
	}
	return fmt.Sprintf("rtt %v, %s, loss %.3g%% (%s)", p.RTT.Round(10*time.Microsecond), bw, p.Loss*100, p.Source)
}

// maxBandwidth bounds bandwidth values (1 TB/s): larger is a measuring
// artefact (an in-memory pipe) and is clamped to it.
const maxBandwidth = 1e12

// Bits per second to bytes per second.
const (
	Mbit = 1e6 / 8
	Gbit = 1e9 / 8
)

// FormatRate prints a byte rate in bits per second, as links are quoted.
func FormatRate(bytesPerSec float64) string {
	bits := bytesPerSec * 8
	switch {
	case bits >= 1e9:
		return fmt.Sprintf("%.3g Gbit/s", bits/1e9)
	case bits >= 1e6:
		return fmt.Sprintf("%.3g Mbit/s", bits/1e6)
	}
	return fmt.Sprintf("%.3g kbit/s", bits/1e3)
}

// Thresholds separate the modes. docs/modes.md derives the defaults from
// the codec speeds measured on this project's machines.
type Thresholds struct {
	// Datacenter needs RTT below DatacenterMaxRTT and bandwidth at least
	// DatacenterMinBandwidth (bytes/s), and no internet condition.
	DatacenterMaxRTT       time.Duration `json:"datacenter_max_rtt"`
	DatacenterMinBandwidth float64       `json:"datacenter_min_bandwidth"`
	// Internet is any of: RTT above InternetMinRTT, bandwidth below
	// InternetMaxBandwidth (bytes/s), loss above InternetMinLoss.
	InternetMinRTT       time.Duration `json:"internet_min_rtt"`
	InternetMaxBandwidth float64       `json:"internet_max_bandwidth"`
	InternetMinLoss      float64       `json:"internet_min_loss"`
	// Margin is the hysteresis: to leave its mode, a path must cross the
	// other mode's threshold by this fraction (0.25: 25 % beyond it).
	Margin float64 `json:"margin"`
	// Hold is how long a path must keep classifying as the new mode before
	// a Classifier switches.
	Hold time.Duration `json:"hold"`
}

// DefaultThresholds are the documented defaults (docs/modes.md):
//
//   - datacenter: RTT < 2 ms and bandwidth >= 1 Gbit/s. A sub-2 ms path of
//     a gigabit or more is a same-site fabric. The bandwidth bar is not
//     higher because the probe measures through DWCP's own TLS transport,
//     which on the 2-core machines measured here carries 1.8-2.4 Gbit/s: a
//     higher bar would classify the host's CPU, not the path. Which codec
//     step such a path gets is then the controller's business (above ~1.75
//     Gbit/s no zstd level keeps up on two cores). A host-bound reading
//     (Path.HostBound) of at least the internet bar meets the bandwidth
//     condition: the link is faster than the hosts can use.
//   - internet: RTT > 30 ms, or bandwidth < 300 Mbit/s, or loss > 0.5 %.
//     Below ~280 Mbit/s (one encode core) to ~550 Mbit/s (two) zstd's
//     stronger levels still outrun the link, so bytes come first; long or
//     lossy paths make every byte slow to deliver (TCP's rate falls with
//     RTT times the square root of loss).
//   - hybrid otherwise.
func DefaultThresholds() Thresholds {
	return Thresholds{
		DatacenterMaxRTT:       2 * time.Millisecond,
		DatacenterMinBandwidth: 1 * Gbit,
		InternetMinRTT:         30 * time.Millisecond,
		InternetMaxBandwidth:   300 * Mbit,
		InternetMinLoss:        0.005,
		Margin:                 0.25,
		Hold:                   2 * time.Second,
	}
}

// WithDefaults fills zero fields from DefaultThresholds.
func (t Thresholds) WithDefaults() Thresholds {
	d := DefaultThresholds()
	if t.DatacenterMaxRTT == 0 {
		t.DatacenterMaxRTT = d.DatacenterMaxRTT
	}
	if t.DatacenterMinBandwidth == 0 {
		t.DatacenterMinBandwidth = d.DatacenterMinBandwidth
	}
	if t.InternetMinRTT == 0 {
		t.InternetMinRTT = d.InternetMinRTT
	}
	if t.InternetMaxBandwidth == 0 {
		t.InternetMaxBandwidth = d.InternetMaxBandwidth
	}
	if t.InternetMinLoss == 0 {
		t.InternetMinLoss = d.InternetMinLoss
	}
	if t.Margin == 0 {
		t.Margin = d.Margin
	}
	if t.Hold == 0 {
		t.Hold = d.Hold
	}
	return t
}

// Validate checks that the thresholds describe three non-empty regions.
func (t Thresholds) Validate() error {
	switch {
	case t.DatacenterMaxRTT <= 0 || t.InternetMinRTT <= 0:
		return fmt.Errorf("thresholds: RTTs must be positive: %w", ErrBadConfig)
	case t.DatacenterMaxRTT > t.InternetMinRTT:
		return fmt.Errorf("thresholds: datacenter max RTT %v above internet min RTT %v: %w", t.DatacenterMaxRTT, t.InternetMinRTT, ErrBadConfig)
	case !(t.DatacenterMinBandwidth > 0 && t.InternetMaxBandwidth > 0 && t.DatacenterMinBandwidth <= maxBandwidth):
		return fmt.Errorf("thresholds: bandwidths must be positive: %w", ErrBadConfig)
	case t.InternetMaxBandwidth > t.DatacenterMinBandwidth:
		return fmt.Errorf("thresholds: internet max bandwidth %s above datacenter min %s: %w",
			FormatRate(t.InternetMaxBandwidth), FormatRate(t.DatacenterMinBandwidth), ErrBadConfig)
	case !(t.InternetMinLoss > 0 && t.InternetMinLoss < 1):
		return fmt.Errorf("thresholds: internet min loss %v outside (0,1): %w", t.InternetMinLoss, ErrBadConfig)
	case !(t.Margin >= 0 && t.Margin < 1):
		return fmt.Errorf("thresholds: margin %v outside [0,1): %w", t.Margin, ErrBadConfig)
	case t.Hold < 0:
		return fmt.Errorf("thresholds: negative hold %v: %w", t.Hold, ErrBadConfig)
	}
	return nil
}

// Classify places a path in a mode. Unknown bandwidth (0) counts as thin:
// bytes first is the safe guess; unknown RTT (0) counts as short.
func Classify(p Path, t Thresholds) Mode {
	t = t.WithDefaults()
	switch {
	case p.RTT > t.InternetMinRTT || p.Bandwidth < t.InternetMaxBandwidth || p.Loss > t.InternetMinLoss:
		return Internet
	case p.RTT < t.DatacenterMaxRTT && (p.Bandwidth >= t.DatacenterMinBandwidth || p.HostBound):
		// A host-bound reading is the hosts' limit, not the link's: a
		// short path the hosts cannot fill is a datacenter path whatever
		// rate they reached, and throughput first is what suits hosts
		// that are the bottleneck (compressing harder costs the CPU they
		// lack). Below the internet bandwidth bar it stays internet.
		return Datacenter
	}
	return Hybrid
}

// widened returns thresholds under which staying in cur is easier by the
// margin: cur's own region grows, the others shrink.
func (t Thresholds) widened(cur Mode) Thresholds {
	f := 1 + t.Margin
	w := t
	switch cur {
	case Datacenter:
		w.DatacenterMaxRTT = time.Duration(float64(t.DatacenterMaxRTT) * f)
		w.DatacenterMinBandwidth = t.DatacenterMinBandwidth / f
		// Leaving datacenter for internet also needs the margin.
		w.InternetMinRTT = time.Duration(float64(t.InternetMinRTT) * f)
		w.InternetMaxBandwidth = t.InternetMaxBandwidth / f
		w.InternetMinLoss = t.InternetMinLoss * f
	case Internet:
		w.InternetMinRTT = time.Duration(float64(t.InternetMinRTT) / f)
		w.InternetMaxBandwidth = t.InternetMaxBandwidth * f
		w.InternetMinLoss = t.InternetMinLoss / f
		w.DatacenterMaxRTT = time.Duration(float64(t.DatacenterMaxRTT) / f)
		w.DatacenterMinBandwidth = t.DatacenterMinBandwidth * f
	case Hybrid:
		w.DatacenterMaxRTT = time.Duration(float64(t.DatacenterMaxRTT) / f)
		w.DatacenterMinBandwidth = t.DatacenterMinBandwidth * f
		w.InternetMinRTT = time.Duration(float64(t.InternetMinRTT) * f)
		w.InternetMaxBandwidth = t.InternetMaxBandwidth / f
		w.InternetMinLoss = math.Min(t.InternetMinLoss*f, 0.999)
	}
	// Keep the regions ordered whatever the margin did.
	w.DatacenterMaxRTT = min(w.DatacenterMaxRTT, w.InternetMinRTT)
	w.InternetMaxBandwidth = math.Min(w.InternetMaxBandwidth, w.DatacenterMinBandwidth)
	return w
}

// Classifier classifies a stream of path estimates with hysteresis: it
// leaves its current mode only when the path is past the other mode's
// threshold by Thresholds.Margin, continuously for Thresholds.Hold.
// It is not safe for concurrent use.
type Classifier struct {
	t         Thresholds
	cur       Mode
	cand      Mode
	candSince time.Time
}

// NewClassifier starts in the mode of the first path.
func NewClassifier(t Thresholds, first Path) *Classifier {
	t = t.WithDefaults()
	return &Classifier{t: t, cur: Classify(first, t)}
}

// NewClassifierAt starts in a given mode (from a cache or an override).
func NewClassifierAt(t Thresholds, m Mode) *Classifier {
	return &Classifier{t: t.WithDefaults(), cur: m}
}

// Mode is the current mode.
func (c *Classifier) Mode() Mode { return c.cur }

// Update feeds an estimate taken at now and returns the mode and whether
// this call changed it.
func (c *Classifier) Update(p Path, now time.Time) (Mode, bool) {
	m := Classify(p, c.t.widened(c.cur))
	if m == c.cur {
		c.cand = 0
		return c.cur, false
	}
	if m != c.cand {
		c.cand, c.candSince = m, now
	}
	if now.Sub(c.candSince) < c.t.Hold {
		return c.cur, false
	}
	c.cur, c.cand = m, 0
	return c.cur, true
}
