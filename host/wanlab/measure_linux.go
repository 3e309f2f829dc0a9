//go:build linux

package wanlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The measurements below use blocking sockets served by their own
// real-time threads, like the forwarder, instead of Go's net package: on a
// machine busy with other work a goroutine woken through Go's poller can
// run milliseconds late, and a bulk sender at normal priority gets a
// fraction of a CPU, so the self-test would measure the machine's load
// rather than the lab. The price is that a fast bulk transfer takes most
// of the CPUs for its few seconds. Blocking calls time out every pollSlice
// to notice a stop.
const pollSlice = 20 * time.Millisecond

// rawSocket creates a blocking socket inside h's namespace, bound to the
// host's lab address with an ephemeral port, with receive and send
// timeouts of pollSlice.
func (l *Lab) rawSocket(h *Host, typ int) (int, netip.AddrPort, error) {
	fd := -1
	err := l.Do(h, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		return -1, netip.AddrPort{}, fmt.Errorf("socket in %s: %w", h, err)
	}
	tv := unix.NsecToTimeval(int64(pollSlice))
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return -1, netip.AddrPort{}, fmt.Errorf("socket timeout in %s: %w", h, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: h.Addr.As4()}); err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("bind in %s: %w", h, err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("getsockname in %s: %w", h, err)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		unix.Close(fd)
		return -1, netip.AddrPort{}, fmt.Errorf("getsockname in %s: %T: %w", h, sa, ErrBadValue)
	}
	return fd, netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)), nil
}

func sockaddr(a netip.AddrPort) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
}

// timedOut reports errors that only mean a blocking call's slice ended.
func timedOut(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR)
}

// udpPair opens a connected UDP socket in each host.
func (l *Lab) udpPair(from, to *Host) (a, b int, err error) {
	a, aAddr, err := l.rawSocket(from, unix.SOCK_DGRAM)
	if err != nil {
		return -1, -1, err
	}
	b, bAddr, err := l.rawSocket(to, unix.SOCK_DGRAM)
	if err != nil {
		unix.Close(a)
		return -1, -1, err
	}
	err = unix.Connect(a, sockaddr(bAddr))
	if err == nil {
		err = unix.Connect(b, sockaddr(aAddr))
	}
	if err != nil {
		unix.Close(a)
		unix.Close(b)
		return -1, -1, fmt.Errorf("connect udp %v-%v: %w", aAddr, bAddr, err)
	}
	return a, b, nil
}

// sleepCtx waits for d or ctx.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Probe is one RTT probe: when it was sent and its round trip, zero if no
// reply came back.
type Probe struct {
	Sent time.Time
	RTT  time.Duration
}

// RTTResult summarises an RTT measurement over the replies received.
type RTTResult struct {
	Probes                   []Probe
	Received                 int
	Min, Median, P90, Max    time.Duration
	OutOfOrder, Unrecognised int
}

// summarizeRTT fills the order statistics from rtts.
func summarizeRTT(r *RTTResult, rtts []time.Duration) {
	r.Received = len(rtts)
	if len(rtts) == 0 {
		return
	}
	slices.Sort(rtts)
	r.Min, r.Max = rtts[0], rtts[len(rtts)-1]
	r.Median = rtts[len(rtts)/2]
	r.P90 = rtts[len(rtts)*9/10]
}

// MeasureRTT sends n probes from one host to a UDP echo in the other, one
// every interval, and waits up to grace after the last for replies.
func MeasureRTT(ctx context.Context, l *Lab, from, to *Host, n int, interval, grace time.Duration) (RTTResult, error) {
	if n < 1 || n > 1<<20 || interval < 0 {
		return RTTResult{}, fmt.Errorf("measure rtt: %d probes every %v: %w", n, interval, ErrBadValue)
	}
	client, echo, err := l.udpPair(from, to)
	if err != nil {
		return RTTResult{}, fmt.Errorf("measure rtt %s->%s: %w", from.Name, to.Name, err)
	}
	reserveProcs(3)
	defer releaseProcs(3)
	var (
		wg      sync.WaitGroup
		stop    atomic.Bool
		mu      sync.Mutex
		got     int
		lastSeq = -1
		allBack = make(chan struct{})
		res     = RTTResult{Probes: make([]Probe, n)}
	)
	defer func() {
		stop.Store(true)
		wg.Wait()
		unix.Close(client)
		unix.Close(echo)
	}()

	wg.Go(func() {
		boostThread(prioMeasure)
		buf := make([]byte, 2048)
		for !stop.Load() {
			m, err := unix.Read(echo, buf)
			if timedOut(err) {
				continue
			}
			if err != nil {
				return
			}
			if _, _, ok := decodeProbe(buf[:m]); ok {
				_, _ = unix.Write(echo, buf[:m])
			}
		}
	})
	wg.Go(func() {
		boostThread(prioMeasure)
		buf := make([]byte, 2048)
		for !stop.Load() {
			m, err := unix.Read(client, buf)
			now := l.mono()
			if timedOut(err) {
				continue
			}
			if err != nil {
				return
			}
			seq, sent, ok := decodeProbe(buf[:m])
			mu.Lock()
			switch {
			case !ok || int(seq) >= n || res.Probes[seq].RTT != 0:
				res.Unrecognised++
			default:
				res.Probes[seq].RTT = max(time.Duration(now-sent), 1)
				if int(seq) < lastSeq {
					res.OutOfOrder++
				}
				lastSeq = max(lastSeq, int(seq))
				got++
				if got == n {
					close(allBack)
				}
			}
			mu.Unlock()
		}
	})

	sendErr := make(chan error, 1)
	wg.Go(func() {
		boostThread(prioMeasure)
		pkt := make([]byte, probeSize)
		start := time.Now()
		for i := range n {
			if stop.Load() {
				sendErr <- nil
				return
			}
			time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
			now := l.mono()
			mu.Lock()
			res.Probes[i].Sent = l.epoch.Add(time.Duration(now))
			mu.Unlock()
			encodeProbe(pkt, uint32(i), now)
			if _, err := unix.Write(client, pkt); err != nil && !timedOut(err) && !errors.Is(err, unix.ECONNREFUSED) {
				sendErr <- fmt.Errorf("send probe %d: %w", i, err)
				return
			}
		}
		sendErr <- nil
	})
	select {
	case err = <-sendErr:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		return RTTResult{}, fmt.Errorf("measure rtt: %w", err)
	}
	wait := time.NewTimer(grace)
	defer wait.Stop()
	select {
	case <-ctx.Done():
		return RTTResult{}, fmt.Errorf("measure rtt: %w", ctx.Err())
	case <-allBack:
	case <-wait.C:
	}
	stop.Store(true)
	wg.Wait()
	rtts := make([]time.Duration, 0, n)
	for _, p := range res.Probes {
		if p.RTT > 0 {
			rtts = append(rtts, p.RTT)
		}
	}
	summarizeRTT(&res, rtts)
	return res, nil
}

// LossResult is a one-way loss measurement.
type LossResult struct {
	Sent, Received, Duplicates int
}

// Rate is the fraction of probes that did not arrive.
func (r LossResult) Rate() float64 {
	if r.Sent == 0 {
		return 0
	}
	return 1 - float64(r.Received)/float64(r.Sent)
}

// MeasureLoss sends n probes one way, paced evenly over spread, and counts
// those that arrive within grace after the last.
func MeasureLoss(ctx context.Context, l *Lab, from, to *Host, n int, spread, grace time.Duration) (LossResult, error) {
	if n < 1 || n > 1<<22 || spread < 0 {
		return LossResult{}, fmt.Errorf("measure loss: %d probes over %v: %w", n, spread, ErrBadValue)
	}
	client, sink, err := l.udpPair(from, to)
	if err != nil {
		return LossResult{}, fmt.Errorf("measure loss %s->%s: %w", from.Name, to.Name, err)
	}
	reserveProcs(1)
	defer releaseProcs(1)
	var (
		wg   sync.WaitGroup
		stop atomic.Bool
		mu   sync.Mutex
		seen = make([]bool, n)
		res  LossResult
	)
	defer func() {
		stop.Store(true)
		wg.Wait()
		unix.Close(client)
		unix.Close(sink)
	}()
	wg.Go(func() {
		boostThread(prioMeasure)
		buf := make([]byte, 2048)
		for !stop.Load() {
			m, err := unix.Read(sink, buf)
			if timedOut(err) {
				continue
			}
			if err != nil {
				return
			}
			seq, _, ok := decodeProbe(buf[:m])
			if !ok || int(seq) >= n {
				continue
			}
			mu.Lock()
			if seen[seq] {
				res.Duplicates++
			} else {
				seen[seq] = true
				res.Received++
			}
			mu.Unlock()
		}
	})

	// Bursts of batch probes: a timer per probe would be too coarse.
	const batch = 20
	every := spread * batch / time.Duration(n)
	start := time.Now()
	pkt := make([]byte, probeSize)
	sent := 0
	for i := range n {
		if i%batch == 0 && i > 0 {
			if err := sleepCtx(ctx, time.Until(start.Add(every*time.Duration(i/batch)))); err != nil {
				return LossResult{}, fmt.Errorf("measure loss: %w", err)
			}
		}
		encodeProbe(pkt, uint32(i), l.mono())
		if _, err := unix.Write(client, pkt); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
			return LossResult{}, fmt.Errorf("measure loss: send probe %d: %w", i, err)
		}
		sent++
	}
	if err := sleepCtx(ctx, grace); err != nil {
		return LossResult{}, fmt.Errorf("measure loss: %w", err)
	}
	stop.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	res.Sent = sent
	return res, nil
}

// ThroughputResult is a bulk TCP transfer measured after its warm-up.
type ThroughputResult struct {
	// Goodput is TCP payload per second at the receiver.
	Goodput Rate
	// Wire is IP bytes per second the shaper forwarded in the direction of
	// the transfer, headers included: the figure to compare with a rate.
	Wire Rate
	// Bytes is the payload received in the measured interval.
	Bytes    int64
	Interval time.Duration
	Streams  int
	// Idle is the fraction of the interval the bottleneck had nothing to
	// send: when the wire rate falls short of the link's, a high Idle says
	// the senders did not keep it busy, a low one that the lab did not
	// deliver.
	Idle float64
	// Congestion is the senders' congestion control; Retransmits (summed)
	// and SmoothedRTT (the largest) come from their TCP_INFO at the end.
	Congestion  string
	Retransmits uint32
	SmoothedRTT time.Duration
}

// ThroughputOptions describe a bulk transfer.
type ThroughputOptions struct {
	// Warmup runs before the measured Duration (default 3 s) starts.
	Warmup, Duration time.Duration
	// Streams is the number of parallel TCP connections, default 1.
	Streams int
	// Congestion names the senders' congestion control; empty keeps the
	// system default, and so does a name the kernel does not have (see
	// the result's Congestion).
	Congestion string
}

// MeasureThroughput runs TCP connections from one host to the other for
// warmup+duration, each writing as fast as it can, and measures the last
// duration.
func MeasureThroughput(ctx context.Context, l *Lab, from, to *Host, opts ThroughputOptions) (ThroughputResult, error) {
	if opts.Duration == 0 {
		opts.Duration = 3 * time.Second
	}
	if opts.Streams == 0 {
		opts.Streams = 1
	}
	if opts.Duration < 0 || opts.Warmup < 0 || opts.Streams < 1 || opts.Streams > 64 {
		return ThroughputResult{}, fmt.Errorf("measure throughput: %+v: %w", opts, ErrBadValue)
	}
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		received atomic.Int64
		fds      [][2]int
	)
	reserveProcs(2 * opts.Streams)
	defer releaseProcs(2 * opts.Streams)
	defer func() {
		stop.Store(true)
		for _, p := range fds {
			// Reset rather than close gracefully: a sender's buffer holds
			// up to a bandwidth-delay product, and an orphaned socket
			// would keep it, counted against the machine's tcp_mem, for
			// minutes of retries once the lab is gone.
			for _, fd := range p {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
				_ = unix.Shutdown(fd, unix.SHUT_RD)
			}
		}
		wg.Wait()
		for _, p := range fds {
			unix.Close(p[0])
			unix.Close(p[1])
		}
	}()
	for range opts.Streams {
		snd, rcv, err := l.tcpPair(ctx, from, to, opts.Congestion)
		if err != nil {
			return ThroughputResult{}, fmt.Errorf("measure throughput %s->%s: %w", from.Name, to.Name, err)
		}
		fds = append(fds, [2]int{snd, rcv})
		wg.Go(func() {
			boostThread(prioMeasure)
			buf := make([]byte, 1<<20)
			for !stop.Load() {
				m, err := unix.Read(rcv, buf)
				if timedOut(err) {
					continue
				}
				if err != nil || m <= 0 {
					return
				}
				received.Add(int64(m))
			}
		})
		wg.Go(func() {
			boostThread(prioMeasure)
			buf := make([]byte, 1<<20)
			for !stop.Load() {
				_, err := unix.SendmsgN(snd, buf, nil, nil, unix.MSG_NOSIGNAL)
				if err != nil && !timedOut(err) {
					return
				}
			}
		})
	}

	snapshot := func() (time.Time, int64, LinkStats) {
		st, _ := l.LinkStats(from, to)
		return time.Now(), received.Load(), st
	}
	if err := sleepCtx(ctx, opts.Warmup); err != nil {
		return ThroughputResult{}, fmt.Errorf("measure throughput: %w", err)
	}
	t0, b0, w0 := snapshot()
	if err := sleepCtx(ctx, opts.Duration); err != nil {
		return ThroughputResult{}, fmt.Errorf("measure throughput: %w", err)
	}
	t1, b1, w1 := snapshot()
	res := ThroughputResult{Bytes: b1 - b0, Interval: t1.Sub(t0), Streams: opts.Streams}
	secs := res.Interval.Seconds()
	res.Goodput = Rate(float64(res.Bytes) * 8 / secs)
	res.Wire = Rate(float64(w1.ForwardedBytes-w0.ForwardedBytes) * 8 / secs)
	res.Idle = float64(w1.Idle-w0.Idle) / float64(res.Interval)
	for _, p := range fds {
		cc, retrans, srtt := tcpInfo(p[0])
		res.Congestion = cc
		res.Retransmits += retrans
		res.SmoothedRTT = max(res.SmoothedRTT, srtt)
	}
	return res, nil
}

// tcpPair connects a TCP socket in from to a listener in to and returns
// both ends; the listener is closed again.
func (l *Lab) tcpPair(ctx context.Context, from, to *Host, congestion string) (snd, rcv int, err error) {
	lfd, laddr, err := l.rawSocket(to, unix.SOCK_STREAM)
	if err != nil {
		return -1, -1, err
	}
	defer unix.Close(lfd)
	if err := unix.Listen(lfd, 1); err != nil {
		return -1, -1, fmt.Errorf("listen in %s: %w", to, err)
	}
	snd, _, err = l.rawSocket(from, unix.SOCK_STREAM)
	if err != nil {
		return -1, -1, err
	}
	if congestion != "" {
		err := unix.SetsockoptString(snd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, congestion)
		if err != nil && !errors.Is(err, unix.ENOENT) {
			unix.Close(snd)
			return -1, -1, fmt.Errorf("congestion control %q: %w", congestion, err)
		}
	}
	// Connect and accept wait at most pollSlice at a time, so that a
	// handshake across a long or cut link still notices ctx.
	err = unix.Connect(snd, sockaddr(laddr))
	for timedOut(err) || errors.Is(err, unix.EINPROGRESS) || errors.Is(err, unix.EALREADY) {
		if ctx.Err() != nil {
			err = ctx.Err()
			break
		}
		fds := []unix.PollFd{{Fd: int32(snd), Events: unix.POLLOUT}}
		n, perr := unix.Poll(fds, int(pollSlice/time.Millisecond))
		switch {
		case perr != nil && !timedOut(perr):
			err = perr
		case n > 0:
			soerr, gerr := unix.GetsockoptInt(snd, unix.SOL_SOCKET, unix.SO_ERROR)
			err = gerr
			if gerr == nil && soerr != 0 {
				err = unix.Errno(soerr)
			}
		}
	}
	if err != nil {
		unix.Close(snd)
		return -1, -1, fmt.Errorf("connect to %v: %w", laddr, err)
	}
	for {
		rcv, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err == nil {
			break
		}
		if !timedOut(err) || ctx.Err() != nil {
			unix.Close(snd)
			return -1, -1, fmt.Errorf("accept in %s: %w", to, errors.Join(err, ctx.Err()))
		}
	}
	// Accepted sockets do not inherit the listener's timeouts.
	tv := unix.NsecToTimeval(int64(pollSlice))
	if err := unix.SetsockoptTimeval(rcv, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(snd)
		unix.Close(rcv)
		return -1, -1, fmt.Errorf("socket timeout in %s: %w", to, err)
	}
	return snd, rcv, nil
}

// tcpInfo reads what the kernel knows about a connection; zero values when
// it cannot.
func tcpInfo(fd int) (cc string, retrans uint32, srtt time.Duration) {
	if s, err := unix.GetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION); err == nil {
		cc = s
	}
	if info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
		retrans = info.Total_retrans
		srtt = time.Duration(info.Rtt) * time.Microsecond
	}
	return cc, retrans, srtt
}
