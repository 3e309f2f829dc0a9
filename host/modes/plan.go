package modes

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/dwcp/dwcp/host/pipeline"
)

// Settings are what a mode asks of the pipeline and the transport for one
// session. The caller applies them; fields it cannot apply (streams on a
// session already open) are recommendations.
type Settings struct {
	Mode Mode
	// PageStage turns the page stage on; PageDisabled lists the techniques
	// it must not use (pagestage.Options.Disabled).
	PageStage    bool
	PageDisabled pagestage.Technique
	// Start is the first batch's codec and level; Ladder the steps the
	// controller may take, lightest first; MinStep and MaxStep bound them
	// for this mode (indexes into Ladder).
	Start            pipeline.Choice
	Ladder           Ladder
	MinStep, MaxStep int
	// Pinned: the user fixed the step (PlanConfig.Step); MinStep and
	// MaxStep both name it, and the controller keeps it through mode
	// changes.
	Pinned bool
	// Streams is the number of transport data connections.
	Streams int
	// BatchBytes is the stream bytes per batch; CheckpointBytes the bytes
	// between digest checkpoints (what the destination holds back).
	BatchBytes      int
	CheckpointBytes int
	// SocketBuffer is SO_SNDBUF/SO_RCVBUF per data connection, 0 to leave
	// the kernel's autotuning; WindowBytes the transport's send window.
	// ExpectedRate and ExpectedRTT describe the path to the transport.
	// Limits and MaxStreams are what the stream count was sized against.
	SocketBuffer int
	WindowBytes  int64
	ExpectedRate int64
	ExpectedRTT  time.Duration
	Limits       SocketLimits
	MaxStreams   int
	// Why explains the choices, one line each, for logs and summaries.
	Why []string
}

// PlanConfig tunes Plan. The zero value uses this machine's numbers.
type PlanConfig struct {
	// Cores is the number of encode workers (default GOMAXPROCS).
	Cores int
	// Priors replace DefaultPriors.
	Priors []Prior
	// MaxStreams bounds Streams (default 16, the transport listener's
	// default limit).
	MaxStreams int
	// Limits are the kernel's socket buffer limits (default: read from
	// /proc/sys on Linux, else the Linux defaults).
	Limits *SocketLimits
	// Step, when set, fixes the codec and level for the whole session
	// (`dwcp migrate --codec`); it must be on the session's ladder. The
	// controller still measures the path and reports, but never moves.
	// For an operator who knows the hosts better than the model, and for
	// measuring one step against QEMU's own migration.
	Step *pipeline.Choice
}

// SocketLimits are the kernel limits that decide how much one TCP
// connection can keep in flight.
type SocketLimits struct {
	// SetMax is net.core.wmem_max/rmem_max (the smaller): the most an
	// explicit SO_SNDBUF/SO_RCVBUF gets.
	SetMax int
	// AutoMax is the largest buffer autotuning reaches (the smaller of
	// tcp_wmem's and tcp_rmem's third field).
	AutoMax int
}

// Linux's stock values, used where /proc/sys cannot be read.
var defaultLimits = SocketLimits{SetMax: 212992, AutoMax: 4 << 20}

// ReadSocketLimits reads the limits from /proc/sys, falling back to the
// Linux defaults for any value it cannot read.
func ReadSocketLimits() SocketLimits {
	l := defaultLimits
	readInt := func(path string, field int) (int, bool) {
		b, err := os.ReadFile(path)
		if err != nil || len(b) > 256 {
			return 0, false
		}
		f := strings.Fields(string(b))
		if field >= len(f) {
			return 0, false
		}
		v, err := strconv.Atoi(f[field])
		return v, err == nil && v > 0
	}
	w, okw := readInt("/proc/sys/net/core/wmem_max", 0)
	r, okr := readInt("/proc/sys/net/core/rmem_max", 0)
	if okw && okr {
		l.SetMax = min(w, r)
	}
	tw, okw := readInt("/proc/sys/net/ipv4/tcp_wmem", 2)
	tr, okr := readInt("/proc/sys/net/ipv4/tcp_rmem", 2)
	if okw && okr {
		l.AutoMax = min(tw, tr)
	}
	return l
}

// Mode bounds on the ladder, by prior speed and ratio: datacenter never
// uses a level slower than minDatacenterSpeed per core (it would make the
// codec the bottleneck of a fat link); hybrid and internet always compress
// (ratio above 1: the page stage's incompressibility test already stores
// random pages), and hybrid stops short of the slowest levels.
const (
	minDatacenterSpeed = 200e6
	minHybridSpeed     = 50e6
)

// Bounds returns the lightest and heaviest ladder index a mode may use.
func (l Ladder) Bounds(m Mode) (lo, hi int) {
	lo, hi = 0, len(l)-1
	switch m {
	case Datacenter:
		for hi > 0 && l[hi].Speed < minDatacenterSpeed {
			hi--
		}
	case Hybrid, Internet:
		for lo < hi && l[lo].Ratio <= 1 {
			lo++
		}
		if m == Hybrid {
			for hi > lo && l[hi].Speed < minHybridSpeed {
				hi--
			}
		}
	}
	return lo, hi
}

// Plan turns a mode and a path into settings for a session with the given
// codecs.
func Plan(mode Mode, path Path, codecs []pipeline.Codec, cfg PlanConfig) (Settings, error) {
	if !mode.Valid() {
		return Settings{}, fmt.Errorf("plan for %v: %w", mode, ErrBadConfig)
	}
	if err := path.Validate(); err != nil {
		return Settings{}, fmt.Errorf("plan for %v: %w", mode, err)
	}
	cores := cfg.Cores
	if cores <= 0 {
		cores = runtime.GOMAXPROCS(0)
	}
	maxStreams := cfg.MaxStreams
	if maxStreams <= 0 {
		maxStreams = 16
	}
	limits := ReadSocketLimitsCached()
	if cfg.Limits != nil {
		limits = *cfg.Limits
	}
	s := Settings{Mode: mode, Ladder: BuildLadder(codecs, cfg.Priors), Limits: limits, MaxStreams: maxStreams}
	s.MinStep, s.MaxStep = s.Ladder.Bounds(mode)
	why := func(format string, args ...any) { s.Why = append(s.Why, fmt.Sprintf(format, args...)) }
	if cfg.Step != nil {
		i := s.Ladder.Index(*cfg.Step)
		if i < 0 {
			return Settings{}, fmt.Errorf("codec %d level %d is not one of this session's steps (%s; the others are slower for no better ratio): %w",
				cfg.Step.Codec, cfg.Step.Level, strings.Join(s.Ladder.Names(), ", "), ErrBadConfig)
		}
		s.MinStep, s.MaxStep, s.Pinned = i, i, true
		why("codec: %s, fixed by the user", s.Ladder[i].Name)
	}

	// Page stage: its per-page work (~1.4 us/page, ~2.9 GB/s a core) would
	// itself bound a datacenter link, so there only the zero test runs.
	switch mode {
	case Datacenter:
		s.PageStage, s.PageDisabled = true, pagestage.AllTechniques&^pagestage.Zero
		why("page stage: zero pages only (throughput first)")
	case Hybrid:
		s.PageStage, s.PageDisabled = true, pagestage.Known
		why("page stage: zero, dedup, delta, incompressible")
	case Internet:
		s.PageStage = true
		why("page stage: every technique (bytes first)")
	}

	// Starting level: the best predicted step within the mode's bounds,
	// throughput first in the datacenter, bytes first elsewhere.
	bw := path.Bandwidth
	if bw <= 0 {
		bw = nominalBandwidth[mode]
		why("bandwidth unknown: planning for a typical %v link of %s", mode, FormatRate(bw))
	}
	sub := s.Ladder[s.MinStep : s.MaxStep+1]
	i := sub.Best(bw, float64(cores), 0.03, mode != Datacenter)
	if mode == Internet {
		// Bytes first: the heaviest step whose encoders still outrun the
		// link with the controller's headroom (priors are estimates).
		for j := len(sub) - 1; j >= 0; j-- {
			if sub[j].Speed*float64(cores) >= (1+defaultHeadroom)*bw*sub[j].Ratio {
				i = j
				break
			}
		}
	}
	if mode == Datacenter {
		// Throughput first: never start heavier than the lightest step
		// that compresses. The predicted link here is often the probe's
		// reading of a host that could not fill a fat link (the lab's
		// 4 Gbit/s link read 1.1-2.4 Gbit/s), and against it the model
		// picks a stronger codec that the cores, shared with the VM,
		// TLS and the peer, then cannot feed: every datacenter demo trip
		// started at zstd:1 and dropped to s2:1 after its first window,
		// cpu-bound. The controller compresses harder where the link
		// turns out to be the bottleneck.
		for j, st := range sub {
			if st.Ratio > 1 {
				if i > j {
					why("datacenter: starting at %s, the lightest compressing step, not the model's %s", st.Name, sub[i].Name)
					i = j
				}
				break
			}
		}
	}
	start := sub[max(i, 0)]
	s.Start = start.Choice
	why("codec: %s to start (%s per core, ratio %.2f; link %s, %d encoders)", start.Name, FormatRate(start.Speed), start.Ratio, FormatRate(bw), cores)

	// Buffers: the bandwidth-delay product.
	path.Bandwidth = bw
	rtt := path.RTT
	bdp := bw * rtt.Seconds()
	s.ExpectedRate, s.ExpectedRTT = int64(bw), rtt
	s.Streams = recommendStreams(mode, path, limits, cores, maxStreams)
	perConn := int(bdp / float64(s.Streams))
	if perConn > 0 && perConn <= limits.SetMax {
		s.SocketBuffer = max(perConn, 128<<10)
	}
	s.WindowBytes = int64(math.Max(2*bdp, 16<<20))
	why("streams: %d; BDP %d KiB; socket buffer %s; window %d MiB", s.Streams, int(bdp)>>10, socketBufText(s.SocketBuffer), s.WindowBytes>>20)

	// Batches: the controller decides once per dwell window of at least
	// minDecisionBatches batches; keep a batch within ~60 ms of link time
	// so that it gets a decision every half second even on a thin link.
	// Internet mode keeps 1 MiB batches for their ratio (3.09 against 2.95
	// at 64 KiB, baselines.md).
	streamRate := bw * start.Ratio
	batch := pow2Floor(int(streamRate * 0.060))
	floor := 256 << 10
	if mode == Internet {
		floor = 1 << 20
	}
	s.BatchBytes = min(max(batch, floor), 2<<20)
	// Checkpoints: about a quarter second of stream, so the destination
	// never holds back much more than QEMU's own downtime budget.
	s.CheckpointBytes = min(max(pow2Floor(int(streamRate*0.25)), 4<<20), 64<<20)
	why("batch %d KiB, checkpoint every %d MiB", s.BatchBytes>>10, s.CheckpointBytes>>20)
	return s, nil
}

func socketBufText(n int) string {
	if n == 0 {
		return "kernel autotuning"
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

func pow2Floor(n int) int {
	if n <= 0 {
		return 0
	}
	p := 1
	for p <= n/2 {
		p <<= 1
	}
	return p
}

// nominalBandwidth stands in for an unknown bandwidth: a typical link of
// each mode.
var nominalBandwidth = map[Mode]float64{Datacenter: 10 * Gbit, Hybrid: 1 * Gbit, Internet: 100 * Mbit}

// mss is the TCP segment payload assumed by the loss model.
const mss = 1448

// recommendStreams sizes the connection count: enough connections that
// each one's window fits the kernel's autotuning limit, enough that the
// loss-limited rate of one TCP connection (Mathis et al.: MSS*1.22 /
// (RTT*sqrt(loss))) times their number reaches the bandwidth, and in the
// datacenter at least two per encode core so that TLS work spreads.
func recommendStreams(mode Mode, p Path, lim SocketLimits, cores, maxStreams int) int {
	n := 4 // the transport's default
	if mode == Datacenter {
		n = max(n, 2*cores)
	}
	bdp := p.Bandwidth * p.RTT.Seconds()
	if lim.AutoMax > 0 && bdp > 0 {
		n = max(n, int(math.Ceil(bdp/float64(lim.AutoMax))))
	}
	if p.Loss > 0 && p.RTT > 0 && p.Bandwidth > 0 {
		perConn := mss * 1.22 / (p.RTT.Seconds() * math.Sqrt(p.Loss))
		n = max(n, int(math.Ceil(p.Bandwidth/perConn)))
	}
	return min(max(n, 1), maxStreams)
}
