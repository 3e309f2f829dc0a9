//go:build linux

package wanlab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Config describes a lab.
type Config struct {
	// Profile shapes every direction. The zero Profile means "internet".
	Profile Profile
	// Hosts is the number of hosts, 2 when zero. Every ordered pair of
	// hosts is a direction with its own shaping and counters.
	Hosts int
	// Subnet holds the hosts' addresses: host i gets the (i+1)-th address.
	// Default 10.77.0.0/24. Labs are isolated from each other, so parallel
	// labs may use the same subnet.
	Subnet netip.Prefix
	// Seed makes loss and jitter reproducible; zero picks a random seed.
	Seed uint64
	// Logf, when set, receives notices such as stale labs cleaned.
	Logf func(format string, args ...any)
}

// Host is one test host: a network namespace with one lab address.
type Host struct {
	Name   string       // h0, h1, ...
	Index  int          // position in Lab.Hosts
	NetNS  string       // namespace name, for `ip netns exec`
	Dev    string       // interface inside the namespace
	Addr   netip.Addr   // the host's address
	Prefix netip.Prefix // the lab subnet, as configured on Dev

	lab   *Lab
	nsfd  int
	tunFD int
}

// Lab is a running set of hosts and the shaper between them. Its methods
// are safe for concurrent use.
type Lab struct {
	name  string
	hosts []*Host
	links [][]*link // [from][to], nil on the diagonal
	plan  addrPlan
	mtu   int
	epoch time.Time
	pool  *packetPool

	ctx    context.Context // ends at Close; bounds Command processes
	cancel context.CancelFunc
	stopFD int            // eventfd that Close signals to stop the forwarder threads
	wg     sync.WaitGroup // forwarder threads

	unroutable atomic.Uint64
	nsMu       sync.RWMutex // guards Host.nsfd against Close
	errMu      sync.Mutex
	err        error // first I/O failure of a forwarding goroutine

	mu       sync.Mutex // guards profile, schedule state and history
	profile  Profile
	schedEnd context.CancelFunc
	schedWG  sync.WaitGroup
	history  []StepChange

	procs     int // GOMAXPROCS reserved for the forwarder, see reserveProcs
	closeOnce sync.Once
	closeErr  error
}

// StepChange records when a profile step came into force.
type StepChange struct {
	At   time.Time
	Step int
}

// maxHistory bounds the step history a long-running lab keeps.
const maxHistory = 4096

var labSeq atomic.Uint64

// New builds a lab: it removes stale labs of dead processes, creates one
// namespace and TUN device per host and starts the shaper. Close releases
// everything, also after a partial failure here.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if cfg.Profile.Name == "" && cfg.Profile.MTU == 0 {
		p, err := LookupProfile("internet")
		if err != nil {
			return nil, err
		}
		cfg.Profile = p
	}
	if err := cfg.Profile.Validate(); err != nil {
		return nil, fmt.Errorf("new lab: %w", err)
	}
	if cfg.Hosts == 0 {
		cfg.Hosts = 2
	}
	if !cfg.Subnet.IsValid() {
		cfg.Subnet = netip.MustParsePrefix("10.77.0.0/24")
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if !cfg.Subnet.Addr().Is4() || cfg.Subnet.Bits() > 30 || cfg.Subnet.Bits() < 8 {
		return nil, fmt.Errorf("new lab: subnet %v: want IPv4 between /8 and /30: %w", cfg.Subnet, ErrBadValue)
	}
	capacity := (1 << (32 - cfg.Subnet.Bits())) - 2
	if cfg.Hosts < 2 || cfg.Hosts > min(capacity, 64) {
		return nil, fmt.Errorf("new lab: %d hosts: want 2..%d: %w", cfg.Hosts, min(capacity, 64), ErrBadValue)
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("new lab: %w", err)
	}
	if err := Available(); err != nil {
		return nil, fmt.Errorf("new lab: %w", err)
	}
	if err := prepareNSDir(); err != nil {
		return nil, fmt.Errorf("new lab: %w", err)
	}
	cleaned, err := cleanStale()
	if err != nil && cfg.Logf != nil {
		cfg.Logf("wanlab: cleaning stale labs: %v", err)
	}
	if len(cleaned) > 0 && cfg.Logf != nil {
		cfg.Logf("wanlab: removed stale lab namespaces %v", cleaned)
	}

	base := cfg.Subnet.Addr().As4()
	l := &Lab{
		name:    fmt.Sprintf("%s%d-%d", namePrefix, os.Getpid(), labSeq.Add(1)),
		mtu:     cfg.Profile.MTU,
		epoch:   time.Now(),
		pool:    newPacketPool(),
		profile: cfg.Profile,
		plan: addrPlan{
			base:  uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]),
			mask:  ^uint32(0) << (32 - cfg.Subnet.Bits()),
			hosts: cfg.Hosts,
		},
	}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.stopFD, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		l.stopFD = -1
		return nil, fmt.Errorf("new lab: stop eventfd: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			l.Close()
		}
	}()

	addr := cfg.Subnet.Addr()
	for i := range cfg.Hosts {
		addr = addr.Next()
		h := &Host{
			Name:   fmt.Sprintf("h%d", i),
			Index:  i,
			NetNS:  fmt.Sprintf("%s-%d", l.name, i),
			Dev:    tunDev,
			Addr:   addr,
			Prefix: cfg.Subnet,
			lab:    l,
			nsfd:   -1,
			tunFD:  -1,
		}
		l.hosts = append(l.hosts, h)
		fd, err := createNetns(h.NetNS, func() error {
			fd, err := setupHost(netip.PrefixFrom(h.Addr, cfg.Subnet.Bits()), cfg.Profile.MTU)
			h.tunFD = fd
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("new lab %s: host %s: %w", l.name, h.Name, err)
		}
		h.nsfd = fd
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("new lab %s: %w", l.name, err)
		}
	}

	params := cfg.Profile.Link()
	l.links = make([][]*link, cfg.Hosts)
	for i, from := range l.hosts {
		l.links[i] = make([]*link, cfg.Hosts)
		for j, to := range l.hosts {
			if i == j {
				continue
			}
			k, err := newLink(from, to, params, cfg.Seed+uint64(i*cfg.Hosts+j)*0x9e3779b97f4a7c15)
			if err != nil {
				return nil, fmt.Errorf("new lab %s: %w", l.name, err)
			}
			l.links[i][j] = k
		}
	}
	for _, c := range cfg.Profile.Cuts {
		l.Cut(l.epoch.Add(c.After), c.For)
	}
	l.procs = cfg.Hosts * cfg.Hosts
	reserveProcs(l.procs)
	for _, row := range l.links {
		for _, k := range row {
			if k != nil {
				l.wg.Go(func() { l.deliverLoop(k) })
			}
		}
	}
	for _, h := range l.hosts {
		l.wg.Go(func() { l.readLoop(h) })
	}
	l.startSchedule(cfg.Profile)
	ok = true
	return l, nil
}

// Name is the lab's unique name, the prefix of its namespaces.
func (l *Lab) Name() string { return l.name }

// MTU is the MTU of every host's lab interface.
func (l *Lab) MTU() int { return l.mtu }

// Hosts returns the hosts in index order.
func (l *Lab) Hosts() []*Host { return append([]*Host(nil), l.hosts...) }

// Host returns host i; it panics on an index out of range, as a slice would.
func (l *Lab) Host(i int) *Host { return l.hosts[i] }

// Profile returns the profile last applied.
func (l *Lab) Profile() Profile {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.profile
}

// mono is the lab clock: nanoseconds since New, monotonic.
func (l *Lab) mono() int64 { return int64(time.Since(l.epoch)) }

func (l *Lab) monoOf(t time.Time) int64 { return int64(t.Sub(l.epoch)) }

func (l *Lab) setErr(err error) {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

// Err returns the first I/O failure of the forwarder, which stops the
// affected direction; nil while all is well.
func (l *Lab) Err() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

// Close stops the shaper, kills processes started with Command and removes
// the namespaces and devices. It is safe to call more than once and after a
// failed New; later calls return the first call's result.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.stopSchedule()
		var errs []error
		if l.stopFD >= 0 {
			var one [8]byte
			binary.NativeEndian.PutUint64(one[:], 1)
			if _, err := unix.Write(l.stopFD, one[:]); err != nil {
				errs = append(errs, fmt.Errorf("signal stop: %w", err))
			}
		}
		l.wg.Wait()
		releaseProcs(l.procs)
		l.procs = 0
		for _, row := range l.links {
			for _, k := range row {
				if k != nil {
					k.close()
				}
			}
		}
		for _, h := range l.hosts {
			if h.tunFD >= 0 {
				unix.Close(h.tunFD)
				h.tunFD = -1
			}
		}
		if l.stopFD >= 0 {
			unix.Close(l.stopFD)
			l.stopFD = -1
		}
		l.nsMu.Lock()
		for _, h := range l.hosts {
			if h.nsfd >= 0 {
				unix.Close(h.nsfd)
				h.nsfd = -1
			}
		}
		l.nsMu.Unlock()
		for _, h := range l.hosts {
			if err := deleteNetns(h.NetNS); err != nil {
				errs = append(errs, err)
			}
		}
		if err := l.Err(); err != nil {
			errs = append(errs, fmt.Errorf("forwarder: %w", err))
		}
		if len(errs) > 0 {
			l.closeErr = fmt.Errorf("close lab %s: %w", l.name, errors.Join(errs...))
		}
	})
	return l.closeErr
}

func (l *Lab) own(h *Host) error {
	if h == nil || h.lab != l {
		return fmt.Errorf("host %v is not a host of lab %s: %w", h, l.name, ErrBadValue)
	}
	return nil
}

func (h *Host) String() string {
	if h == nil {
		return "<nil>"
	}
	return h.Name + "(" + h.Addr.String() + ")"
}

func (l *Lab) link(from, to *Host) (*link, error) {
	if err := l.own(from); err != nil {
		return nil, err
	}
	if err := l.own(to); err != nil {
		return nil, err
	}
	if from == to {
		return nil, fmt.Errorf("link %s to itself: %w", from.Name, ErrBadValue)
	}
	return l.links[from.Index][to.Index], nil
}

// Packets wait in the shaper for their due time, and a forwarder thread
// that the kernel runs late makes every packet late. On a machine busy
// with other work a normal thread wakes milliseconds late, even at nice
// -20 (measured: p99 3.5 ms, max 76 ms at 94 % CPU pressure); a SCHED_FIFO
// thread wakes within tens of microseconds (p99 73 µs, max 1.6 ms). The
// forwarder threads only move packets the endpoints produce, so their CPU
// use is bounded by the traffic, and the kernel's RT throttling keeps 5 %
// for everything else in any case. The forwarder ranks above the
// measurements' endpoints, which would otherwise hold a CPU it needs.
const (
	prioForwarder = 2
	prioMeasure   = 1
	boostNice     = -15 // fallback without CAP_SYS_NICE for SCHED_FIFO
)

// boostThread locks the calling goroutine to its thread for good (the
// thread ends with the goroutine and its priority with it) and makes the
// thread SCHED_FIFO at prio, or at least raises its nice value.
func boostThread(prio uint32) {
	runtime.LockOSThread()
	attr := unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: prio}
	if unix.SchedSetAttr(0, &attr, 0) != nil {
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), boostNice)
	}
}

// The boosted threads block in system calls, and a Go thread blocked in a
// system call keeps its P until sysmon takes it back. On a busy machine
// sysmon, a normal thread, runs late, so with GOMAXPROCS at the CPU count
// the lab's threads would hold every P and starve the process's other
// goroutines, the endpoints under test included (measured: a TCP transfer
// at 100 Mbit/s reached a third of it). While labs run, GOMAXPROCS is
// raised by one P per boosted thread, and restored when the last closes.
var procs struct {
	sync.Mutex
	base, extra int
}

func reserveProcs(n int) {
	if n == 0 {
		return
	}
	procs.Lock()
	defer procs.Unlock()
	if procs.extra == 0 {
		procs.base = runtime.GOMAXPROCS(0)
	}
	procs.extra += n
	runtime.GOMAXPROCS(procs.base + procs.extra)
}

func releaseProcs(n int) {
	if n == 0 {
		return
	}
	procs.Lock()
	defer procs.Unlock()
	procs.extra -= n
	runtime.GOMAXPROCS(procs.base + procs.extra)
}

// waitReadable blocks until fd is readable or the lab is stopping, which
// it reports as false.
func (l *Lab) waitReadable(fds []unix.PollFd) (bool, error) {
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		if fds[1].Revents != 0 {
			return false, nil
		}
		if fds[0].Revents != 0 {
			return true, nil
		}
	}
}

// readLoop moves packets from one host's TUN into the links towards their
// destinations. It runs on its own thread, blocking in poll and read rather
// than in Go's poller, so its wake-up does not wait for a Go scheduler
// thread. It owns one read buffer of the MTU's size class; small packets
// are copied into a buffer of their own class so that the big one goes
// straight back to reading.
func (l *Lab) readLoop(h *Host) {
	boostThread(prioForwarder)
	rclass := classFor(l.mtu)
	cur := l.pool.get(rclass)
	defer func() { l.pool.put(cur) }()
	fds := []unix.PollFd{{Fd: int32(h.tunFD), Events: unix.POLLIN}, {Fd: int32(l.stopFD), Events: unix.POLLIN}}
	for {
		n, err := unix.Read(h.tunFD, cur.buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			ok, perr := l.waitReadable(fds)
			if perr != nil {
				l.setErr(fmt.Errorf("poll tun of %s: %w", h.Name, perr))
			}
			if !ok {
				return
			}
			continue
		}
		if err != nil {
			l.setErr(fmt.Errorf("read tun of %s: %w", h.Name, err))
			return
		}
		now := l.mono()
		to := l.plan.route(cur.buf[:n])
		if to < 0 || to == h.Index {
			l.unroutable.Add(1)
			continue
		}
		p := cur
		if c := classFor(n); c < rclass {
			p = l.pool.get(c)
			copy(p.buf, cur.buf[:n])
		} else {
			cur = l.pool.get(rclass)
		}
		p.n = n
		l.links[h.Index][to].enqueue(p, now, l.pool)
	}
}

// coalesce lets one wake-up deliver packets due a little later, so a
// busy link is not woken once per packet.
const coalesce = 20 * int64(time.Microsecond)

// deliverLoop is the single scheduler of one direction: on its own thread
// it sleeps on the link's timerfd until the head packet is due and writes
// every due packet into the destination TUN. A timerfd fires with the
// kernel's hrtimer precision (microseconds) where a Go timer is rounded to
// about a millisecond.
func (l *Lab) deliverLoop(k *link) {
	boostThread(prioForwarder)
	var tick [8]byte
	batch := make([]*packet, 0, 64)
	fds := []unix.PollFd{{Fd: int32(k.timerFD), Events: unix.POLLIN}, {Fd: int32(l.stopFD), Events: unix.POLLIN}}
	for {
		ok, err := l.waitReadable(fds)
		if err != nil {
			l.setErr(fmt.Errorf("poll timer of %s->%s: %w", k.from.Name, k.to.Name, err))
		}
		if !ok {
			return
		}
		// Reading resets the expiry count; EAGAIN means a re-arm raced
		// the wake-up, harmless since due looks at the clock.
		_, _ = unix.Read(k.timerFD, tick[:])
		batch = k.due(l.mono(), batch[:0], l.pool)
		for i, p := range batch {
			if _, err := unix.Write(k.to.tunFD, p.buf[:p.n]); err != nil {
				k.writeErrors.Add(1)
			}
			l.pool.put(p)
			batch[i] = nil
		}
	}
}

// link is one direction: its shaper, the packets it holds and its counters.
type link struct {
	from, to *Host

	mu       sync.Mutex
	sh       *shaper
	q        packetHeap
	seq      uint64
	timerFD  int   // read by deliverLoop; -1 once closed
	armedAt  int64 // due time the timer is set for; MaxInt64 when unset
	counters counters

	writeErrors atomic.Uint64
}

// counters are guarded by link.mu.
type counters struct {
	arrived, arrivedBytes     uint64
	forwarded, forwardedBytes uint64
	queueDrops, queueBytes    uint64
	lossDrops, lossBytes      uint64
	cutDrops, cutBytes        uint64
	// late sums how far past their due time packets were written, the
	// scheduler's own error; lateMax is the worst.
	late, lateMax int64
}

func newLink(from, to *Host, p LinkParams, seed uint64) (*link, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd for %s->%s: %w", from.Name, to.Name, err)
	}
	return &link{
		from:    from,
		to:      to,
		sh:      newShaper(p, seed),
		timerFD: fd,
		armedAt: math.MaxInt64,
	}, nil
}

// arm sets the timer to fire at the lab time at. Called with mu held.
func (k *link) arm(at, now int64) {
	if k.timerFD < 0 {
		return
	}
	wait := max(at-now, 1)
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(wait)}
	if err := unix.TimerfdSettime(k.timerFD, 0, &spec, nil); err == nil {
		k.armedAt = at
	}
}

// enqueue runs the shaper on a packet that arrived at now and either holds
// it for delivery or recycles it.
func (k *link) enqueue(p *packet, now int64, pool *packetPool) {
	k.mu.Lock()
	c := &k.counters
	c.arrived++
	c.arrivedBytes += uint64(p.n)
	v, at := k.sh.admit(now, p.n)
	switch v {
	case verdictForward:
		k.seq++
		p.at, p.seq = at, k.seq
		k.q.push(p)
		if at < k.armedAt {
			k.arm(at, now)
		}
		k.mu.Unlock()
		return
	case verdictQueue:
		c.queueDrops++
		c.queueBytes += uint64(p.n)
	case verdictLoss:
		c.lossDrops++
		c.lossBytes += uint64(p.n)
	case verdictCut:
		c.cutDrops++
		c.cutBytes += uint64(p.n)
	}
	k.mu.Unlock()
	pool.put(p)
}

// due takes the packets due by now off the queue, dropping those whose
// arrival falls in a cut, and re-arms the timer for the next one.
func (k *link) due(now int64, batch []*packet, pool *packetPool) []*packet {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.armedAt = math.MaxInt64
	c := &k.counters
	for len(k.q) > 0 && k.q[0].at <= now+coalesce {
		p := k.q.pop()
		k.sh.delivered(p.n)
		if len(k.sh.cuts) > 0 && k.sh.isCut(p.at, now) {
			c.cutDrops++
			c.cutBytes += uint64(p.n)
			pool.put(p)
			continue
		}
		c.forwarded++
		c.forwardedBytes += uint64(p.n)
		if d := now - p.at; d > 0 {
			c.late += d
			c.lateMax = max(c.lateMax, d)
		}
		batch = append(batch, p)
	}
	if len(k.q) > 0 {
		k.arm(k.q[0].at, now)
	}
	return batch
}

// close releases the timer once the forwarder threads have stopped.
func (k *link) close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.timerFD >= 0 {
		unix.Close(k.timerFD)
		k.timerFD = -1
	}
}

// SetLink changes one direction's parameters; packets already accepted
// keep their delivery times.
func (l *Lab) SetLink(from, to *Host, p LinkParams) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("set link: %w", err)
	}
	k, err := l.link(from, to)
	if err != nil {
		return fmt.Errorf("set link: %w", err)
	}
	k.mu.Lock()
	k.sh.set(p)
	k.mu.Unlock()
	return nil
}

// SetAll changes every direction's parameters.
func (l *Lab) SetAll(p LinkParams) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("set links: %w", err)
	}
	l.eachLink(func(k *link) { k.sh.set(p) })
	return nil
}

func (l *Lab) eachLink(fn func(*link)) {
	for _, row := range l.links {
		for _, k := range row {
			if k != nil {
				k.mu.Lock()
				fn(k)
				k.mu.Unlock()
			}
		}
	}
}

// Link returns one direction's current parameters.
func (l *Lab) Link(from, to *Host) (LinkParams, error) {
	k, err := l.link(from, to)
	if err != nil {
		return LinkParams{}, fmt.Errorf("get link: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.sh.p, nil
}

// SetProfile applies a profile to every direction and restarts its
// schedule; its scheduled cuts count from now. The MTU cannot change while
// the lab runs.
func (l *Lab) SetProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("set profile: %w", err)
	}
	if p.MTU != l.mtu {
		return fmt.Errorf("set profile %q: mtu %d differs from the lab's %d: %w", p.Name, p.MTU, l.mtu, ErrBadValue)
	}
	l.stopSchedule()
	params := p.Link()
	l.eachLink(func(k *link) { k.sh.set(params) })
	l.mu.Lock()
	l.profile = p
	l.mu.Unlock()
	now := time.Now()
	for _, c := range p.Cuts {
		l.Cut(now.Add(c.After), c.For)
	}
	l.startSchedule(p)
	return nil
}

// Cut drops every packet in every direction from start for d: packets
// arriving at the queue and packets that would reach the far end in that
// time. Use time.Now() as start for a cut from now.
func (l *Lab) Cut(start time.Time, d time.Duration) {
	s := l.monoOf(start)
	l.eachLink(func(k *link) { k.sh.cut(s, s+int64(d)) })
}

// CutLink cuts one direction, as Cut does for all.
func (l *Lab) CutLink(from, to *Host, start time.Time, d time.Duration) error {
	k, err := l.link(from, to)
	if err != nil {
		return fmt.Errorf("cut link: %w", err)
	}
	s := l.monoOf(start)
	k.mu.Lock()
	k.sh.cut(s, s+int64(d))
	k.mu.Unlock()
	return nil
}

func (l *Lab) startSchedule(p Profile) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recordStep(0)
	if len(p.Steps) < 2 {
		return
	}
	ctx, cancel := context.WithCancel(l.ctx)
	l.schedEnd = cancel
	l.schedWG.Add(1)
	go l.runSchedule(ctx, p)
}

func (l *Lab) stopSchedule() {
	l.mu.Lock()
	end := l.schedEnd
	l.schedEnd = nil
	l.mu.Unlock()
	if end != nil {
		end()
	}
	l.schedWG.Wait()
}

// recordStep appends to the history. Called with mu held.
func (l *Lab) recordStep(i int) {
	if len(l.history) >= maxHistory {
		l.history = append(l.history[:0], l.history[len(l.history)/2:]...)
	}
	l.history = append(l.history, StepChange{At: time.Now(), Step: i})
}

// runSchedule cycles through a profile's steps. Each step keeps the other
// parameters of every direction and sets its delay to half the step's RTT
// and its rate.
func (l *Lab) runSchedule(ctx context.Context, p Profile) {
	defer l.schedWG.Done()
	i := 0
	t := time.NewTimer(p.Steps[0].For)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		i = (i + 1) % len(p.Steps)
		st := p.Steps[i]
		l.eachLink(func(k *link) {
			np := k.sh.p
			np.Delay, np.Rate = st.RTT/2, st.Rate
			k.sh.set(np)
		})
		l.mu.Lock()
		l.recordStep(i)
		l.mu.Unlock()
		t.Reset(st.For)
	}
}

// History returns when each profile step came into force, oldest first.
// SetProfile and New record step 0.
func (l *Lab) History() []StepChange {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]StepChange(nil), l.history...)
}

// LinkStats are one direction's counters since New. Arrived counts packets
// routed into the direction; each ends up forwarded, dropped, or still in
// flight.
type LinkStats struct {
	From, To                  string
	Params                    LinkParams
	Arrived, ArrivedBytes     uint64
	Forwarded, ForwardedBytes uint64
	QueueDrops, QueueBytes    uint64
	LossDrops, LossBytes      uint64
	CutDrops, CutBytes        uint64
	WriteErrors               uint64
	// LateMean and LateMax say how far after its due time the scheduler
	// handed a packet to the destination: the lab's own timing error,
	// which grows when the machine is overloaded.
	LateMean, LateMax time.Duration
	QueuePeakBytes    int64
	// Idle is the time the rate-limited bottleneck had nothing to send.
	Idle          time.Duration
	InFlightBytes int64
	QueueNowBytes int64
}

// Stats is a snapshot of every direction's counters.
type Stats struct {
	Links []LinkStats
	// Unroutable counts packets read from a host that were not for another
	// lab host (IPv6, broadcast, foreign addresses); they are dropped.
	Unroutable uint64
}

func (k *link) stats(now int64) LinkStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.counters
	return LinkStats{
		From: k.from.Name, To: k.to.Name, Params: k.sh.p,
		Arrived: c.arrived, ArrivedBytes: c.arrivedBytes,
		Forwarded: c.forwarded, ForwardedBytes: c.forwardedBytes,
		QueueDrops: c.queueDrops, QueueBytes: c.queueBytes,
		LossDrops: c.lossDrops, LossBytes: c.lossBytes,
		CutDrops: c.cutDrops, CutBytes: c.cutBytes,
		WriteErrors:    k.writeErrors.Load(),
		LateMean:       time.Duration(c.late / int64(max(c.forwarded, 1))),
		LateMax:        time.Duration(c.lateMax),
		QueuePeakBytes: k.sh.queuePeak,
		Idle:           time.Duration(k.sh.idle),
		InFlightBytes:  k.sh.inFlight,
		QueueNowBytes:  k.sh.queueNow(now),
	}
}

// Stats returns every direction's counters.
func (l *Lab) Stats() Stats {
	now := l.mono()
	var s Stats
	for _, row := range l.links {
		for _, k := range row {
			if k != nil {
				s.Links = append(s.Links, k.stats(now))
			}
		}
	}
	s.Unroutable = l.unroutable.Load()
	return s
}

// MeanLateSince is how late, on average, the scheduler handed over the
// packets direction from->to forwarded between the snapshot before and s
// (0 when none were). A lab whose lateness reaches the one-way delay it
// emulates was not running the profile's link: the machine starved the
// shaper.
func (s Stats) MeanLateSince(before Stats, from, to string) time.Duration {
	find := func(st Stats) (LinkStats, bool) {
		for _, k := range st.Links {
			if k.From == from && k.To == to {
				return k, true
			}
		}
		return LinkStats{}, false
	}
	a, okA := find(before)
	b, okB := find(s)
	if !okA || !okB || b.Forwarded <= a.Forwarded {
		return 0
	}
	n := float64(b.Forwarded - a.Forwarded)
	return time.Duration((float64(b.LateMean)*float64(b.Forwarded) - float64(a.LateMean)*float64(a.Forwarded)) / n)
}

// LinkStats returns one direction's counters.
func (l *Lab) LinkStats(from, to *Host) (LinkStats, error) {
	k, err := l.link(from, to)
	if err != nil {
		return LinkStats{}, fmt.Errorf("link stats: %w", err)
	}
	return k.stats(l.mono()), nil
}

// KernelDrops returns the packets the kernel dropped on a host's TUN
// device, for example when the forwarder fell behind and the device queue
// overflowed. Such drops are losses the profile did not ask for.
func (l *Lab) KernelDrops(h *Host) (uint64, error) {
	if err := l.own(h); err != nil {
		return 0, fmt.Errorf("kernel drops: %w", err)
	}
	var st devStats
	err := l.Do(h, func() error {
		var err error
		st, err = readDevStats(h.Dev)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("kernel drops of %s: %w", h.Name, err)
	}
	return st.TxDropped + st.RxDropped, nil
}

// Do runs fn on an OS thread switched into h's network namespace and waits
// for it. Sockets fn creates belong to the namespace and work from any
// goroutine afterwards; goroutines fn starts run in the root namespace.
// A panic in fn is re-raised in the caller.
func (l *Lab) Do(h *Host, fn func() error) error {
	if err := l.own(h); err != nil {
		return fmt.Errorf("do: %w", err)
	}
	// A duplicate keeps the namespace reachable even if Close runs
	// meanwhile.
	l.nsMu.RLock()
	fd := -1
	var err error
	if h.nsfd >= 0 {
		fd, err = unix.Dup(h.nsfd)
	}
	l.nsMu.RUnlock()
	if fd < 0 {
		if err == nil {
			err = net.ErrClosed
		}
		return fmt.Errorf("do in %s: lab %s closed: %w", h.Name, l.name, err)
	}
	defer unix.Close(fd)
	return withNetns(fd, fn)
}

// Listen listens inside h's namespace, as net.Listen does.
func (l *Lab) Listen(h *Host, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.Do(h, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, h, err)
	}
	return ln, nil
}

// ListenPacket opens a packet socket inside h's namespace, as
// net.ListenPacket does.
func (l *Lab) ListenPacket(h *Host, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := l.Do(h, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen packet %s %s in %s: %w", network, addr, h, err)
	}
	return pc, nil
}

// Dial connects from inside h's namespace, as net.Dialer.DialContext does.
// Give addresses as IP literals: a name lookup would run outside the
// namespace.
func (l *Lab) Dial(ctx context.Context, h *Host, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.Do(h, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, h, err)
	}
	return c, nil
}

// Command prepares a process that runs inside h's namespace through
// `ip netns exec`. Close kills it if it still runs. A host of another lab
// makes Start fail.
func (l *Lab) Command(h *Host, name string, args ...string) *exec.Cmd {
	if err := l.own(h); err != nil {
		cmd := exec.Command(name, args...)
		cmd.Err = fmt.Errorf("command: %w", err)
		return cmd
	}
	return exec.CommandContext(l.ctx, "ip", append([]string{"netns", "exec", h.NetNS, name}, args...)...)
}

// Available reports why a lab cannot run here, or nil when it can.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("wanlab needs root (namespaces and TUN devices): %w", ErrUnavailable)
	}
	f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("wanlab needs /dev/net/tun: %v: %w", err, ErrUnavailable)
	}
	f.Close()
	return nil
}

// LabNamespaces lists the lab namespaces present on this machine, of any
// process; tests use it to check that nothing was left behind.
func LabNamespaces() ([]string, error) { return listLabNetns() }
