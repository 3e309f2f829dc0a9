package modes

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/dwcp/dwcp/host/transport"
)

// memConn is one end of an in-process ordered message pipe. With a rate,
// the pipe behaves like a link: messages leave a bounded queue at rate
// bytes/s and arrive delay later, so a probe over it sees a known
// bandwidth and RTT.
type memConn struct {
	out, in *shaped
	closed  chan struct{}
	once    *sync.Once
}

// shaped is one direction of a pipe.
type shaped struct {
	rate  float64       // bytes/s, 0 unlimited
	delay time.Duration // one way
	queue chan timedMsg // what Send handed in, bounded: the socket buffer
	ready chan []byte   // what arrived
	done  chan struct{}
	wg    sync.WaitGroup
}

type timedMsg struct {
	b  []byte
	at time.Time
}

func newShaped(rate float64, delay time.Duration, queue int, closed chan struct{}) *shaped {
	s := &shaped{rate: rate, delay: delay, queue: make(chan timedMsg, queue), ready: make(chan []byte, 1<<14), done: closed}
	s.wg.Add(1)
	go s.run()
	return s
}

// run schedules each message's arrival: it leaves the bottleneck after the
// previous one (size/rate later) and arrives delay after that. Sleeping
// to the scheduled time keeps the average rate even when the goroutine
// wakes late.
func (s *shaped) run() {
	defer s.wg.Done()
	var free time.Time
	for {
		var m timedMsg
		select {
		case m = <-s.queue:
		case <-s.done:
			return
		}
		dep := m.at
		if s.rate > 0 {
			dep = later(m.at, free).Add(time.Duration(float64(len(m.b)) / s.rate * 1e9))
			free = dep
		}
		if d := time.Until(dep.Add(s.delay)); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
				return
			}
		}
		select {
		case s.ready <- m.b:
		case <-s.done:
			return
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// memPipe returns two connected ends; both directions are shaped alike.
func memPipe(t testing.TB, rate float64, delay time.Duration) (*memConn, *memConn) {
	return memPipeQ(t, rate, delay, 64)
}

// memPipeQ is memPipe with a send queue of the given number of messages
// (the window Send blocks on).
func memPipeQ(t testing.TB, rate float64, delay time.Duration, queue int) (*memConn, *memConn) {
	closed, once := make(chan struct{}), &sync.Once{}
	ab, ba := newShaped(rate, delay, queue, closed), newShaped(rate, delay, queue, closed)
	a := &memConn{out: ab, in: ba, closed: closed, once: once}
	b := &memConn{out: ba, in: ab, closed: closed, once: once}
	t.Cleanup(func() {
		a.Close()
		ab.wg.Wait()
		ba.wg.Wait()
	})
	return a, b
}

func (m *memConn) Send(ctx context.Context, msg []byte) error {
	// A closed pipe refuses every Send: in the select below a free queue
	// slot would win half the time.
	select {
	case <-m.closed:
		return io.ErrClosedPipe
	default:
	}
	select {
	case m.out.queue <- timedMsg{b: append([]byte(nil), msg...), at: time.Now()}:
		return nil
	case <-m.closed:
		return io.ErrClosedPipe
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *memConn) Recv(ctx context.Context) ([]byte, error) {
	select {
	case b := <-m.in.ready:
		return b, nil
	case <-m.closed:
		return nil, io.ErrClosedPipe
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (m *memConn) Close() { m.once.Do(func() { close(m.closed) }) }

// respondAsync runs Respond and hands back its results.
type respondResult struct {
	leftover []byte
	err      error
}

func respondAsync(ctx context.Context, c Conn) <-chan respondResult {
	ch := make(chan respondResult, 1)
	go func() {
		l, err := Respond(ctx, c)
		ch <- respondResult{l, err}
	}()
	return ch
}

func TestProbeOverShapedPipe(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// 640 Mbit/s, 10 ms RTT: a metro link, hybrid by the defaults. Large
	// messages keep the pipe's spacing (1.6 ms) above the timer slack of a
	// loaded machine.
	const rate = 80e6
	a, b := memPipe(t, rate, 5*time.Millisecond)
	done := respondAsync(ctx, b)
	res, err := Probe(ctx, a, ProbeConfig{MessageSize: 128 << 10})
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.leftover != nil {
		t.Fatalf("respond: %v, leftover %d bytes", r.err, len(r.leftover))
	}
	p := res.Path
	t.Logf("probe: %v in %v, rounds %+v", p, res.Elapsed, res.Rounds)
	if p.RTT < 10*time.Millisecond || p.RTT > 25*time.Millisecond {
		t.Errorf("RTT %v, want ~10ms", p.RTT)
	}
	if p.Bandwidth < 0.6*rate || p.Bandwidth > 1.4*rate {
		t.Errorf("bandwidth %s, want ~%s", FormatRate(p.Bandwidth), FormatRate(rate))
	}
	if len(res.RTTs) != 5 || len(res.Rounds) == 0 || p.Source != "probe" || res.LossKnown || p.When.IsZero() {
		t.Errorf("result %+v", res)
	}
	if m := Classify(p, Thresholds{}); m != Hybrid {
		t.Errorf("classified %v, want hybrid", m)
	}
	sent := 0
	for _, r := range res.Rounds {
		sent += r.Bytes
	}
	if sent > 16<<20 || res.Elapsed > 3*time.Second {
		t.Errorf("probe sent %d bytes in %v, bounds are 16 MiB and ~1 s", sent, res.Elapsed)
	}
}

func TestProbeBoundsTimeOnAThinLink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// 8 Mbit/s: the 8 MiB budget would take 8 s; MaxTime keeps it short.
	const rate = 1e6
	a, b := memPipe(t, rate, 10*time.Millisecond)
	done := respondAsync(ctx, b)
	res, err := Probe(ctx, a, ProbeConfig{MaxTime: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("probe: %v in %v, %d rounds", res.Path, res.Elapsed, len(res.Rounds))
	if res.Elapsed > 1500*time.Millisecond {
		t.Errorf("probe took %v with MaxTime 500ms", res.Elapsed)
	}
	if bw := res.Path.Bandwidth; bw < 0.7*rate || bw > 1.4*rate {
		t.Errorf("bandwidth %s, want ~%s", FormatRate(bw), FormatRate(rate))
	}
	if m := Classify(res.Path, Thresholds{}); m != Internet {
		t.Errorf("classified %v", m)
	}
}

func TestProbeReusesAMatchingCacheEntry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 20 ms RTT: a loaded 2-core machine adds a few ms of scheduling delay
	// to every sample (6.4 ms read for 4 ms), which must stay inside the
	// cache's 50 % tolerance.
	a, b := memPipe(t, 0, 10*time.Millisecond)
	cached := Path{RTT: 20 * time.Millisecond, Bandwidth: 3 * Gbit, Loss: 0.001, Source: "probe", When: time.Now()}
	done := respondAsync(ctx, b)
	res, err := Probe(ctx, a, ProbeConfig{Cached: &cached})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	if !res.FromCache || len(res.Rounds) != 0 || res.Path.Bandwidth != cached.Bandwidth || res.Path.Loss != cached.Loss || res.Path.Source != "cache" {
		t.Errorf("with a matching cache entry: %+v", res)
	}
	// An entry whose RTT no longer matches is measured again.
	stale := Path{RTT: 200 * time.Millisecond, Bandwidth: 3 * Gbit, When: time.Now()}
	done = respondAsync(ctx, b)
	res, err = Probe(ctx, a, ProbeConfig{Cached: &stale})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	if res.FromCache || len(res.Rounds) == 0 || res.Path.Source != "probe" {
		t.Errorf("with a stale cache entry: %+v", res)
	}
}

func TestRespondHandsOnTheFirstPipelineFrame(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a, b := memPipe(t, 0, 0)
	done := respondAsync(ctx, b)
	hello := []byte{1, 0, 0, 0, 42} // a pipeline Hello frame: type 1
	if err := a.Send(ctx, hello); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || string(r.leftover) != string(hello) {
		t.Fatalf("respond: %v, leftover %v", r.err, r.leftover)
	}
	if IsProbeMessage(hello) || !IsProbeMessage([]byte{msgPing}) || IsProbeMessage(nil) {
		t.Error("IsProbeMessage")
	}
}

// A prober that breaks the protocol gets an error message back, and
// Respond fails with ErrProbeProtocol.
func TestRespondRejectsProtocolViolations(t *testing.T) {
	cases := map[string][][]byte{
		"bad version":         {{msgPing, 2, 0, 0, 0, 0}},
		"short ping":          {{msgPing, 1, 0}},
		"unknown type":        {{0xFA, 1}},
		"too many messages":   {appendBurstStart(nil, 0, MaxBurstMessages+1, 1024)},
		"huge messages":       {appendBurstStart(nil, 0, 4, MaxBurstMessageSize+1)},
		"data without start":  {burstData(0, 0, 64)},
		"data out of order":   {appendBurstStart(nil, 0, 4, 64), burstData(0, 1, 64)},
		"data wrong size":     {appendBurstStart(nil, 0, 4, 64), burstData(0, 0, 65)},
		"data past count":     {appendBurstStart(nil, 0, 1, 64), burstData(0, 0, 64), burstData(0, 1, 64)},
		"end with a gap":      {appendBurstStart(nil, 0, 4, 64), burstData(0, 0, 64), appendBurstEnd(nil, 0, 2)},
		"ping inside burst":   {appendBurstStart(nil, 0, 4, 64), appendPing(nil, msgPing, 0)},
		"frame inside burst":  {appendBurstStart(nil, 0, 4, 64), {3, 0, 0}},
		"report to responder": {appendReport(nil, 0, nil)},
		"peer error":          {appendError(nil, "prober gave up")},
	}
	for name, msgs := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a, b := memPipe(t, 0, 0)
			done := respondAsync(ctx, b)
			for _, m := range msgs {
				if err := a.Send(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
			r := <-done
			if !errors.Is(r.err, ErrProbeProtocol) {
				t.Fatalf("Respond = %v, want ErrProbeProtocol", r.err)
			}
			if name == "peer error" {
				return
			}
			back, err := a.Recv(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if m, err := parseProbe(back, nil); err != nil || m.typ != msgError || m.text == "" {
				t.Errorf("responder sent %v (%v), want an error message", back, err)
			}
		})
	}
}

func burstData(round, index uint32, size int) []byte {
	b := make([]byte, size)
	fillBurstData(b, round, index)
	return b
}

// A responder that lies or breaks the protocol makes Probe fail cleanly.
func TestProbeRejectsBadResponders(t *testing.T) {
	for name, reply := range map[string]func(m probeMsg) [][]byte{
		"wrong pong seq": func(m probeMsg) [][]byte {
			if m.typ == msgPing {
				return [][]byte{appendPing(nil, msgPong, m.seq+1)}
			}
			return nil
		},
		"short report": func(m probeMsg) [][]byte {
			switch m.typ {
			case msgPing:
				return [][]byte{appendPing(nil, msgPong, m.seq)}
			case msgBurstEnd:
				return [][]byte{appendReport(nil, m.round, []sample{{0, 1}})}
			}
			return nil
		},
		"samples out of order": func(m probeMsg) [][]byte {
			switch m.typ {
			case msgPing:
				return [][]byte{appendPing(nil, msgPong, m.seq)}
			case msgBurstEnd:
				s := make([]sample, m.sent)
				for i := range s {
					s[i] = sample{at: uint64(len(s) - i), bytes: 1}
				}
				return [][]byte{appendReport(nil, m.round, s)}
			}
			return nil
		},
		"pipeline frame": func(probeMsg) [][]byte { return [][]byte{{2, 0}} },
		"error":          func(probeMsg) [][]byte { return [][]byte{appendError(nil, "no")} },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			a, b := memPipe(t, 0, 0)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					msg, err := b.Recv(ctx)
					if err != nil {
						return
					}
					m, err := parseProbe(msg, nil)
					if err != nil || m.typ == msgError || m.typ == msgDone {
						return
					}
					for _, r := range reply(m) {
						if b.Send(ctx, r) != nil {
							return
						}
					}
				}
			}()
			_, err := Probe(ctx, a, ProbeConfig{Pings: 2, MaxBytes: 1 << 20})
			if !errors.Is(err, ErrProbeProtocol) {
				t.Errorf("Probe = %v, want ErrProbeProtocol", err)
			}
			a.Close()
			wg.Wait()
		})
	}
}

// frameConn frames messages on a byte stream with a 4-byte length.
type frameConn struct {
	c   net.Conn
	r   *bufio.Reader
	hdr [4]byte
	max int
}

func newFrameConn(c net.Conn) *frameConn {
	return &frameConn{c: c, r: bufio.NewReaderSize(c, 64<<10), max: 2 << 20}
}

func (f *frameConn) deadline(ctx context.Context) {
	d, _ := ctx.Deadline()
	f.c.SetDeadline(d)
}

func (f *frameConn) Send(ctx context.Context, msg []byte) error {
	f.deadline(ctx)
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(msg)), uint32(len(msg)))
	_, err := f.c.Write(append(b, msg...))
	return err
}

func (f *frameConn) Recv(ctx context.Context) ([]byte, error) {
	f.deadline(ctx)
	if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(f.hdr[:])
	if int(n) > f.max {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(f.r, b)
	return b, err
}

func TestProbeOverTCPLoopback(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := make(chan respondResult, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- respondResult{err: err}
			return
		}
		defer c.Close()
		l, err := Respond(ctx, newFrameConn(c))
		srv <- respondResult{l, err}
	}()
	var loss ConnLoss
	dial := loss.WrapDial(nil)
	c, err := dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := Probe(ctx, newFrameConn(c), ProbeConfig{Loss: &loss})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-srv; r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("loopback: %v, rounds %+v, loss known %v", res.Path, res.Rounds, res.LossKnown)
	if res.Path.RTT <= 0 || res.Path.RTT > 100*time.Millisecond {
		t.Errorf("loopback RTT %v", res.Path.RTT)
	}
	// Loopback moves GB/s when the machine is idle; shared CI machines
	// still manage far more than a thin link.
	if res.Path.Bandwidth < 50*Mbit {
		t.Errorf("loopback bandwidth %s", FormatRate(res.Path.Bandwidth))
	}
	if res.LossKnown && res.Path.Loss != 0 {
		t.Errorf("loopback lost %v", res.Path.Loss)
	}
	// Loopback rarely loses a packet, so its connection mostly stays in
	// slow start and little is counted; the counters are readable.
	cnt, err := loss.TCPCounters()
	if err != nil || cnt.Retransmitted > cnt.SegmentsSent {
		t.Errorf("tcp counters %+v, %v", cnt, err)
	}
}

func TestConnLossWithoutSockets(t *testing.T) {
	var l ConnLoss
	if _, err := l.TCPCounters(); !errors.Is(err, ErrNoTCPInfo) {
		t.Errorf("no connections: %v", err)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	l.Track(a) // not a socket: ignored
	if _, err := l.TCPCounters(); !errors.Is(err, ErrNoTCPInfo) {
		t.Errorf("pipe: %v", err)
	}
}

// sessionPair opens a real transport session (mutual TLS on loopback).
func sessionPair(t *testing.T, dial transport.DialFunc) (cli, srv *transport.Session) {
	t.Helper()
	return sessionPairOn(t, nil, dial, 0)
}

// sessionPairOn opens a transport session whose listener is nl (nil: a
// loopback port) and whose dialer uses dial, with the given number of data
// connections (0: the transport's default).
func sessionPairOn(t *testing.T, nl net.Listener, dial transport.DialFunc, streams int) (cli, srv *transport.Session) {
	t.Helper()
	ca, err := certs.NewCA(certs.CAOptions{CommonName: "modes test CA"})
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string]*certs.Host{}
	for _, n := range []string{"src", "dst"} {
		h, err := ca.Issue(certs.HostRequest{Name: n, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
		if err != nil {
			t.Fatal(err)
		}
		hosts[n] = h
	}
	srvTLS, _ := ca.TLSConfigs(hosts["dst"])
	_, cliTLS := ca.TLSConfigs(hosts["src"])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lc := transport.ListenConfig{Addr: "127.0.0.1:0", TLS: srvTLS, Listener: nl}
	ln, err := transport.Listen(ctx, lc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	acc := make(chan *transport.Session, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := ln.Accept(ctx)
		if err != nil {
			errc <- err
			return
		}
		acc <- s
	}()
	cli, err = transport.Dial(ctx, transport.DialConfig{Addr: ln.Addr().String(), PeerName: "dst", TLS: cliTLS, Dial: dial, Streams: streams})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case srv = <-acc:
	case err := <-errc:
		cli.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close(); srv.Close() })
	return cli, srv
}

func TestProbeOverTransportSession(t *testing.T) {
	var loss ConnLoss
	cli, srv := sessionPair(t, loss.WrapDial(nil))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	done := respondAsync(ctx, srv)
	res, err := Probe(ctx, cli, ProbeConfig{Loss: &loss})
	if err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.leftover != nil {
		t.Fatalf("respond: %v %v", r.err, r.leftover)
	}
	t.Logf("transport session: %v, %d rounds", res.Path, len(res.Rounds))
	if res.Path.RTT <= 0 || res.Path.Bandwidth < 20*Mbit {
		t.Errorf("path %v", res.Path)
	}
	// The session carries on with the pipeline's frames after the probe.
	if err := cli.Send(ctx, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if got, err := srv.Recv(ctx); err != nil || string(got) != "\x01\x02\x03" {
		t.Fatalf("after the probe: %v %v", got, err)
	}
	if c, err := loss.TCPCounters(); err != nil || c.Retransmitted > c.SegmentsSent {
		t.Errorf("transport connections' counters %+v %v", c, err)
	}
	// The session's own stats feed the passive estimate.
	ls := TransportSampler{Session: cli, Loss: &loss}.Sample()
	if !ls.CountersOK {
		t.Errorf("sampler %+v", ls)
	}
}

func TestTrainRates(t *testing.T) {
	// 17 messages of 1000 bytes, 1 ms apart: 16000 bytes over 16 ms after
	// the first = 1 MB/s, in every slice too.
	train := func(n int, gap func(i int) time.Duration) []sample {
		var s []sample
		at := time.Duration(0)
		for i := range n {
			s = append(s, sample{at: uint64(at), bytes: 1000})
			at += gap(i)
		}
		return s
	}
	r := trainRates(train(17, func(int) time.Duration { return time.Millisecond }))
	if r.Span != 16*time.Millisecond || r.Rate != 1e6 || r.EnvelopeRate < 0.99e6 || r.EnvelopeRate > 1.01e6 {
		t.Errorf("steady train: %+v", r)
	}
	// Slow start: the first quarter at a quarter of the rate. The envelope
	// of a train that speeds up is its chord: the estimate stays on the
	// safe side, and the next, longer round runs without slow start.
	r = trainRates(train(33, func(i int) time.Duration {
		if i < 8 {
			return 4 * time.Millisecond
		}
		return time.Millisecond
	}))
	if math.Abs(r.Rate-32000/0.056) > 1 || r.EnvelopeRate < 0.99*r.Rate || r.EnvelopeRate > 1.01*r.Rate || roundEstimate(r) != r.EnvelopeRate {
		t.Errorf("slow start train: %+v", r)
	}
	// The receiver stalls 20 ms in the middle, then drains its backlog at
	// once: the whole-train rate is bent, the envelope is not.
	r = trainRates(train(33, func(i int) time.Duration {
		switch {
		case i == 10:
			return 20 * time.Millisecond
		case i > 10 && i < 30:
			return 0
		}
		return time.Millisecond
	}))
	if r.EnvelopeRate < 0.9e6 || r.EnvelopeRate > 1.1e6 {
		t.Errorf("stalled receiver: %+v", r)
	}
	// Arrivals closer than the clock resolves give no rate.
	if r := trainRates([]sample{{0, 10}, {1, 10}, {2, 10}, {3, 10}, {4, 10}, {5, 10}, {6, 10}}); r.Rate != 0 || r.EnvelopeRate != 0 || roundEstimate(r) != 0 {
		t.Errorf("instant train: %+v", r)
	}
	if r := trainRates(nil); r != (Round{}) {
		t.Errorf("empty: %+v", r)
	}
}

// kernelCounters is a LossSource that reports fixed kernel RTTs.
type kernelCounters struct{ minRTT time.Duration }

func (k kernelCounters) TCPCounters() (TCPCounters, error) {
	return TCPCounters{MinRTT: k.minRTT, SRTT: k.minRTT}, nil
}

// The kernel's ACK-timed minimum RTT replaces pings that a busy host
// delayed, never pings that were faster.
func TestProbeTakesTheKernelRTTWhenPingsWereDelayed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, b := memPipe(t, 0, 10*time.Millisecond) // pings read >= 20 ms
	cached := Path{RTT: 5 * time.Millisecond, Bandwidth: 3 * Gbit, Source: "probe", When: time.Now()}
	done := respondAsync(ctx, b)
	res, err := Probe(ctx, a, ProbeConfig{Loss: kernelCounters{minRTT: 5 * time.Millisecond}, Cached: &cached})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	if res.Path.RTT != 5*time.Millisecond || !res.KernelRTT {
		t.Errorf("pings %v, kernel 5ms: probe says %v (kernel RTT used: %v)", res.RTTs, res.Path.RTT, res.KernelRTT)
	}
	// The kernel's RTT confirms the cached path: no burst.
	if !res.FromCache || len(res.Rounds) != 0 {
		t.Errorf("with the kernel's RTT matching the cache: from cache %v, %d rounds", res.FromCache, len(res.Rounds))
	}

	a, b = memPipe(t, 0, 2*time.Millisecond)
	done = respondAsync(ctx, b)
	res, err = Probe(ctx, a, ProbeConfig{Loss: kernelCounters{minRTT: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	if res.Path.RTT >= time.Second || res.KernelRTT {
		t.Errorf("pings %v, kernel 1s: probe says %v (kernel RTT used: %v)", res.RTTs, res.Path.RTT, res.KernelRTT)
	}
}

// clockSendState is a SendStateSource whose one connection's peer
// acknowledges ackRate bytes/s from its creation on, and is busy (the
// network limiting it) all the time or never.
type clockSendState struct {
	start   time.Time
	ackRate float64
	busy    bool
}

func (c clockSendState) TCPCounters() (TCPCounters, error) { return TCPCounters{}, ErrNoTCPInfo }

func (c clockSendState) SendStates() ([]SendState, error) {
	d := time.Since(c.start)
	s := SendState{Acked: uint64(c.ackRate * d.Seconds())}
	if c.busy {
		s.Busy = d
	}
	return []SendState{s}, nil
}

func TestProbeJudgesRoundsByTheKernelsSendState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A 20 MB/s pipe: its rounds last long enough to be judged.
	const rate = 20e6
	for _, c := range []struct {
		name      string
		src       clockSendState
		hostBound bool
		bwLo      float64
	}{
		// The sender's queue was full all the time: the link set the pace.
		{"link-bound", clockSendState{ackRate: rate, busy: true}, false, 0.6 * rate},
		// The sender had nothing queued: the hosts set the pace.
		{"sender idle", clockSendState{ackRate: rate, busy: false}, true, 0.6 * rate},
		// The peer's kernel acknowledged faster than the responder read:
		// the acknowledgements, not the late arrivals, time the link.
		{"receiver reads late", clockSendState{ackRate: 4 * rate, busy: true}, false, 2.5 * rate},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, b := memPipe(t, rate, time.Millisecond)
			done := respondAsync(ctx, b)
			src := c.src
			src.start = time.Now()
			res, err := Probe(ctx, a, ProbeConfig{MessageSize: 64 << 10, Loss: src})
			if err != nil {
				t.Fatal(err)
			}
			if r := <-done; r.err != nil {
				t.Fatal(r.err)
			}
			t.Logf("%v, rounds %+v", res.Path, res.Rounds)
			last := res.Rounds[len(res.Rounds)-1]
			if !last.NetworkKnown || last.KernelRate <= 0 || last.AckSpan < minJudgedSpan {
				t.Fatalf("last round %+v: the kernel's view is missing", last)
			}
			if res.Path.HostBound != c.hostBound {
				t.Errorf("host-bound %v, want %v", res.Path.HostBound, c.hostBound)
			}
			if res.Path.Bandwidth < c.bwLo {
				t.Errorf("bandwidth %s, want at least %s", FormatRate(res.Path.Bandwidth), FormatRate(c.bwLo))
			}
		})
	}
}
