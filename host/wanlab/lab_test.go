//go:build linux

package wanlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func profile(t *testing.T, name string) Profile {
	t.Helper()
	p, err := LookupProfile(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// custom is a quick profile for behaviour tests.
func custom(rtt time.Duration, rate Rate) Profile {
	return Profile{Name: "test", RTT: rtt, Rate: rate, MTU: 1500, QueueDelay: 20 * time.Millisecond}
}

// TestSelfTestInternet runs the whole self-test on the demo profile: RTT,
// loss and the rate of a TCP bulk transfer, each within its tolerance.
func TestSelfTestInternet(t *testing.T) {
	l := NewTest(t, Config{Profile: profile(t, "internet")})
	rep, err := SelfTest(t.Context(), l, SelfTestOptions{Duration: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	rep.WriteText(&buf)
	t.Log("\n" + buf.String())
	if !rep.OK() {
		t.Fatal("self-test failed")
	}
	for _, name := range []string{"rtt median", "loss one-way", "rate (wire, tcp bulk)"} {
		if c, ok := rep.Check(name); !ok || !c.Judged {
			t.Errorf("check %q missing or not judged", name)
		}
	}
}

// TestRTTDatacenter checks the sub-millisecond profile, which depends on
// the timerfd scheduler rather than Go timers.
func TestRTTDatacenter(t *testing.T) {
	p := profile(t, "dc")
	l := NewTest(t, Config{Profile: p})
	r, err := MeasureRTT(t.Context(), l, l.Host(0), l.Host(1), 40, 5*time.Millisecond, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := rttCheck("rtt median", p.RTT, r.Median, 0)
	t.Logf("dc rtt: min %v median %v p90 %v max %v (accepted %v..%v ms)", r.Min, r.Median, r.P90, r.Max, c.Low, c.High)
	if r.Received != 40 || !c.OK {
		t.Fatalf("received %d of 40, median %v outside %v..%v ms", r.Received, r.Median, c.Low, c.High)
	}
	if r.Min < p.RTT {
		t.Fatalf("a probe came back in %v, faster than the configured %v", r.Min, p.RTT)
	}
}

func TestLossAndCounters(t *testing.T) {
	p := custom(4*time.Millisecond, 0)
	p.Loss = 0.1
	l := NewTest(t, Config{Profile: p, Seed: 1})
	a, b := l.Host(0), l.Host(1)
	const n = 3000
	res, err := MeasureLoss(t.Context(), l, a, b, n, 300*time.Millisecond, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c := lossCheck("loss", 0.1, res.Sent, res.Sent-res.Received, true)
	if !c.OK || res.Duplicates != 0 {
		st, _ := l.LinkStats(a, b)
		t.Fatalf("lost %.2f %% (accepted %.2f..%.2f), %d duplicates; %+v", c.Measured, c.Low, c.High, res.Duplicates, st)
	}
	st, err := l.LinkStats(a, b)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing else travels in the lab: every probe is either forwarded
	// and received or counted as lost.
	if st.Arrived != n || st.Forwarded != uint64(res.Received) || st.LossDrops != uint64(n-res.Received) {
		t.Fatalf("counters %+v, want %d arrived, %d forwarded, %d lost", st, n, res.Received, n-res.Received)
	}
	if st.ForwardedBytes != st.Forwarded*(probeSize+28) || st.QueueDrops+st.CutDrops != 0 {
		t.Fatalf("counters %+v: bytes or drops wrong", st)
	}
	back, _ := l.LinkStats(b, a)
	if back.Arrived != 0 {
		t.Fatalf("reverse direction saw %d packets, want none", back.Arrived)
	}
}

func TestQueueDropTail(t *testing.T) {
	// 8 Mbit/s is one byte per microsecond; the queue holds 20 ms.
	p := custom(10*time.Millisecond, 8*Mbps)
	l := NewTest(t, Config{Profile: p})
	a, b := l.Host(0), l.Host(1)
	src, sink, err := l.udpPair(a, b)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(src)
	defer unix.Close(sink)
	const size, burst = 972, 400 // 1000-byte IP packets
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		arrivals []time.Time
	)
	wg.Go(func() {
		boostThread(prioMeasure)
		buf := make([]byte, 2048)
		for !stop.Load() {
			if _, err := unix.Read(sink, buf); err == nil {
				arrivals = append(arrivals, time.Now())
			}
		}
	})
	msg := make([]byte, size)
	for range burst {
		if _, err := unix.Write(src, msg); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	st, _ := l.LinkStats(a, b)
	// 20 ms of queue holds 20 packets, plus what drained while the burst
	// was being written.
	if st.Arrived != burst || st.Forwarded+st.QueueDrops != burst || st.Forwarded < 20 || st.Forwarded > 60 {
		t.Fatalf("counters %+v: want about 20 of %d forwarded, the rest queue drops", st, burst)
	}
	if len(arrivals) != int(st.Forwarded) {
		t.Fatalf("received %d, forwarded %d", len(arrivals), st.Forwarded)
	}
	// The survivors leave the bottleneck 1 ms apart.
	span := arrivals[len(arrivals)-1].Sub(arrivals[0])
	want := time.Duration(len(arrivals)-1) * time.Millisecond
	if span < want*8/10 || span > want*13/10 {
		t.Fatalf("%d packets arrived over %v, want about %v at 8 Mbit/s", len(arrivals), span, want)
	}
	if st.QueuePeakBytes > 21_000 {
		t.Fatalf("queue peaked at %d bytes, above its 20000", st.QueuePeakBytes)
	}
}

func TestJitterOrder(t *testing.T) {
	for _, reorder := range []bool{false, true} {
		p := custom(20*time.Millisecond, 0)
		p.Jitter, p.Reorder = 4*time.Millisecond, reorder
		l := NewTest(t, Config{Profile: p, Seed: 3})
		r, err := MeasureRTT(t.Context(), l, l.Host(0), l.Host(1), 300, time.Millisecond, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("reorder %v: rtt %v..%v, %d out of order", reorder, r.Min, r.Max, r.OutOfOrder)
		if r.Received != 300 || r.Max-r.Min < 3*time.Millisecond {
			t.Fatalf("reorder %v: received %d, rtt spread %v..%v", reorder, r.Received, r.Min, r.Max)
		}
		if reorder != (r.OutOfOrder > 0) {
			t.Fatalf("reorder %v: %d replies out of order", reorder, r.OutOfOrder)
		}
		l.Close()
	}
}

// TestCutAndResume cuts the link while probes and a TCP transfer run:
// probes in the cut are lost, and both recover after it, the TCP stream
// with every byte intact.
func TestCutAndResume(t *testing.T) {
	l := NewTest(t, Config{Profile: custom(10*time.Millisecond, 50*Mbps)})
	a, b := l.Host(0), l.Host(1)
	ctx := t.Context()

	ln, err := l.Listen(b, "tcp4", netip.AddrPortFrom(b.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := make([]byte, 256<<10)
	rand.Read(payload)
	got := make(chan []byte, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		data, _ := io.ReadAll(c)
		got <- data
	})
	conn, err := l.Dial(ctx, a, "tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	cutStart := time.Now().Add(300 * time.Millisecond)
	const cutFor = 700 * time.Millisecond
	l.Cut(cutStart, cutFor)
	wg.Go(func() {
		// Half before the cut, half during it.
		conn.Write(payload[:len(payload)/2])
		time.Sleep(time.Until(cutStart.Add(100 * time.Millisecond)))
		conn.Write(payload[len(payload)/2:])
		conn.(*net.TCPConn).CloseWrite()
	})

	r, err := MeasureRTT(ctx, l, a, b, 150, 10*time.Millisecond, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cutEnd := cutStart.Add(cutFor)
	var inCut, lostInCut, after, lostAfter int
	for _, p := range r.Probes {
		switch {
		case p.Sent.After(cutStart.Add(5*time.Millisecond)) && p.Sent.Add(15*time.Millisecond).Before(cutEnd):
			inCut++
			if p.RTT == 0 {
				lostInCut++
			}
		case p.Sent.After(cutEnd.Add(5 * time.Millisecond)):
			after++
			if p.RTT == 0 {
				lostAfter++
			}
		}
	}
	if inCut < 40 || lostInCut != inCut || after < 20 || lostAfter != 0 {
		t.Fatalf("probes in the cut: %d lost of %d; after it: %d lost of %d", lostInCut, inCut, lostAfter, after)
	}
	select {
	case data := <-got:
		if !bytes.Equal(data, payload) {
			t.Fatalf("TCP stream after the cut: %d bytes, want the %d sent, intact", len(data), len(payload))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("TCP stream did not resume after the cut")
	}
	st, _ := l.LinkStats(a, b)
	if st.CutDrops == 0 {
		t.Fatalf("no cut drops counted: %+v", st)
	}
}

func TestScheduledCutOneDirection(t *testing.T) {
	p := custom(4*time.Millisecond, 0)
	p.Cuts = []ScheduledCut{{After: 0, For: time.Hour}}
	l := NewTest(t, Config{Profile: p})
	a, b := l.Host(0), l.Host(1)
	// The profile's cut holds both directions: nothing gets through.
	r, err := MeasureRTT(t.Context(), l, a, b, 5, 5*time.Millisecond, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Received != 0 {
		t.Fatalf("%d probes answered through a cut link", r.Received)
	}
	// A lab without scheduled cuts, cut in one direction only: the
	// probes reach the echo, the replies do not.
	l2 := NewTest(t, Config{Profile: custom(4*time.Millisecond, 0)})
	a2, b2 := l2.Host(0), l2.Host(1)
	if err := l2.CutLink(b2, a2, time.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	r, err = MeasureRTT(t.Context(), l2, a2, b2, 5, 5*time.Millisecond, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	fwd, _ := l2.LinkStats(a2, b2)
	rev, _ := l2.LinkStats(b2, a2)
	if r.Received != 0 || fwd.Forwarded != 5 || rev.CutDrops != 5 {
		t.Fatalf("received %d; forward %+v; reverse %+v", r.Received, fwd, rev)
	}
}

// TestChangeWhileRunning changes the RTT under a running lab, by SetAll
// and by a profile's schedule.
func TestChangeWhileRunning(t *testing.T) {
	l := NewTest(t, Config{Profile: custom(10*time.Millisecond, 0)})
	a, b := l.Host(0), l.Host(1)
	measure := func() time.Duration {
		t.Helper()
		r, err := MeasureRTT(t.Context(), l, a, b, 10, 5*time.Millisecond, 300*time.Millisecond)
		if err != nil || r.Received != 10 {
			t.Fatalf("rtt: %v, %d received", err, r.Received)
		}
		return r.Median
	}
	if m := measure(); !rttCheck("", 10*time.Millisecond, m, 0).OK {
		t.Fatalf("rtt %v, want 10 ms", m)
	}
	if err := l.SetAll(LinkParams{Delay: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if m := measure(); !rttCheck("", 40*time.Millisecond, m, 0).OK {
		t.Fatalf("rtt %v after SetAll, want 40 ms", m)
	}

	sched := custom(10*time.Millisecond, 0)
	sched.Steps = []Step{{For: 400 * time.Millisecond, RTT: 10 * time.Millisecond}, {For: 400 * time.Millisecond, RTT: 50 * time.Millisecond}}
	if err := l.SetProfile(sched); err != nil {
		t.Fatal(err)
	}
	r, err := MeasureRTT(t.Context(), l, a, b, 80, 10*time.Millisecond, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	hist := l.History()
	checks := stepRTTChecks(sched, hist, r, 0)
	for _, c := range checks {
		if !c.OK {
			t.Errorf("%s: measured %v ms, accepted %v..%v (%s)", c.Name, c.Measured, c.Low, c.High, c.Note)
		}
	}
	if len(hist) < 3 {
		t.Fatalf("history %v: the schedule did not step", hist)
	}
	bad := sched
	bad.MTU = 9000
	if err := l.SetProfile(bad); !errors.Is(err, ErrBadValue) {
		t.Fatalf("MTU change accepted: %v", err)
	}
}

func TestCommandInHost(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("ip (iproute2) not installed: %v", err)
		}
		t.Skipf("ip (iproute2) not installed: %v", err)
	}
	l := NewTest(t, Config{})
	h := l.Host(1)
	out, err := l.Command(h, "ip", "-4", "-o", "addr", "show", "dev", h.Dev).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), h.Addr.String()+"/24") {
		t.Fatalf("ip addr in %s: %q, want %v/24", h.NetNS, out, h.Addr)
	}
	// A process still running when the lab closes is killed.
	sleep := l.Command(h, "sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleep.Wait() }()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("sleep exited cleanly, want killed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("process in the lab survived Close")
	}
	other := NewTest(t, Config{})
	if err := other.Command(h, "true").Run(); !errors.Is(err, ErrBadValue) {
		t.Fatalf("command in a host of another lab: %v", err)
	}
}

func TestDoAndSockets(t *testing.T) {
	l := NewTest(t, Config{Profile: custom(2*time.Millisecond, 0)})
	a, b := l.Host(0), l.Host(1)
	// Inside a host only its own lab address and loopback exist.
	var ifaces []string
	if err := l.Do(a, func() error {
		list, err := net.Interfaces()
		for _, i := range list {
			ifaces = append(ifaces, i.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ifaces, ",") != "lo,wan0" {
		t.Fatalf("interfaces in %s: %v", a.NetNS, ifaces)
	}
	// A listener made in one host accepts connections from another, and
	// the sockets work from other goroutines.
	ln, err := l.Listen(b, "tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	})
	port := ln.Addr().(*net.TCPAddr).Port
	c, err := l.Dial(t.Context(), a, "tcp", netip.AddrPortFrom(b.Addr, uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := []byte("across the lab")
	c.Write(msg)
	echo := make([]byte, len(msg))
	if _, err := io.ReadFull(c, echo); err != nil || !bytes.Equal(echo, msg) {
		t.Fatalf("echo %q, %v", echo, err)
	}
	// The caller's own namespace is untouched: the lab address is not
	// here.
	if ln2, err := net.Listen("tcp", netip.AddrPortFrom(b.Addr, 0).String()); err == nil {
		ln2.Close()
		t.Fatalf("lab address %v bound in the root namespace", b.Addr)
	}
	// A panic inside a host reaches the caller.
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(r.(string), "boom") {
				t.Fatalf("recovered %v, want the panic from Do", r)
			}
		}()
		l.Do(a, func() error { panic("boom") })
	}()
	other := NewTest(t, Config{})
	if err := other.Do(a, func() error { return nil }); !errors.Is(err, ErrBadValue) {
		t.Fatalf("Do with another lab's host: %v", err)
	}
	if _, err := l.LinkStats(a, a); !errors.Is(err, ErrBadValue) {
		t.Fatalf("link to itself: %v", err)
	}
}

// TestCleanup checks that Close leaves no namespace behind, even for a lab
// with three hosts, and that New removes namespaces of a dead process.
func TestCleanup(t *testing.T) {
	SkipUnlessAvailable(t)
	// A stale namespace, as left by a lab process that was killed.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := namePrefix + strconv.Itoa(dead.Process.Pid) + "-1-0"
	fd, err := createNetns(stale, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)

	l, err := New(context.Background(), Config{Hosts: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(nsDir, stale)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale namespace %s survived New: %v", stale, err)
	}
	var names []string
	for _, h := range l.Hosts() {
		names = append(names, h.NetNS)
	}
	if len(l.Stats().Links) != 6 {
		t.Fatalf("3 hosts: %d directions, want 6", len(l.Stats().Links))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	present, err := LabNamespaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		for _, p := range present {
			if n == p {
				t.Fatalf("namespace %s left after Close", n)
			}
		}
	}
	if err := l.Do(l.Host(0), func() error { return nil }); err == nil {
		t.Fatal("Do after Close succeeded")
	}
}

func TestNewRejects(t *testing.T) {
	SkipUnlessAvailable(t)
	for name, cfg := range map[string]Config{
		"one host":     {Hosts: 1},
		"ipv6 subnet":  {Subnet: netip.MustParsePrefix("fd00::/64")},
		"tiny subnet":  {Subnet: netip.MustParsePrefix("10.1.1.0/31")},
		"too many":     {Hosts: 7, Subnet: netip.MustParsePrefix("10.1.1.0/29")},
		"bad profile":  {Profile: Profile{Name: "x", MTU: 10}},
		"bad loss val": {Profile: Profile{Name: "x", MTU: 1500, Loss: 2}},
	} {
		if l, err := New(context.Background(), cfg); !errors.Is(err, ErrBadValue) {
			if l != nil {
				l.Close()
			}
			t.Errorf("%s: err %v, want ErrBadValue", name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(ctx, Config{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

// TestMainCommands drives the CLI entry point.
func TestMainCommands(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"profiles"}, &out, &errb); code != 0 {
		t.Fatalf("profiles: exit %d: %s", code, errb.String())
	}
	for _, p := range Profiles() {
		if !strings.Contains(out.String(), p.Name) {
			t.Errorf("profiles output lacks %s:\n%s", p.Name, out.String())
		}
	}
	for _, args := range [][]string{{}, {"fly"}, {"up", "--profile", "moon"}, {"up", "--rate", "fast"}, {"selftest", "--profile", "moon"}, {"up", "--loss", "7"}} {
		errb.Reset()
		if code := Main(context.Background(), args, io.Discard, &errb); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errb.String())
		}
	}

	SkipUnlessAvailable(t)
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- Main(ctx, []string{"up", "--profile", "dc", "--rtt", "2ms", "--hosts", "3"}, pw, io.Discard)
		pw.Close()
	}()
	buf := make([]byte, 4096)
	var acc strings.Builder
	for !strings.Contains(acc.String(), "interrupt to stop") {
		n, err := pr.Read(buf)
		if err != nil {
			t.Fatalf("up ended early: %v\n%s", err, acc.String())
		}
		acc.Write(buf[:n])
	}
	cancel()
	rest, _ := io.ReadAll(pr)
	acc.Write(rest)
	if c := <-code; c != 0 {
		t.Fatalf("up: exit %d\n%s", c, acc.String())
	}
	text := acc.String()
	for _, want := range []string{"10.77.0.1/24", "10.77.0.3/24", "dc+overrides", "ip netns exec " + namePrefix, "lab removed", "h2->h0"} {
		if !strings.Contains(text, want) {
			t.Errorf("up output lacks %q:\n%s", want, text)
		}
	}
}
