package modes

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/transport"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// labSessions opens a transport session between two hosts of lab: h0 dials
// h1 through the shaped link, with mutual TLS from a fresh CA.
func labSessions(t testing.TB, ctx context.Context, lab *wanlab.Lab) (src, dst *transport.Session) {
	t.Helper()
	ca, err := certs.NewCA(certs.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h0, h1 := lab.Host(0), lab.Host(1)
	var srvTLS, cliTLS *tls.Config
	for i, h := range []*wanlab.Host{h0, h1} {
		host, err := ca.Issue(certs.HostRequest{Name: []string{"src", "dst"}[i], IPs: []net.IP{net.IP(h.Addr.AsSlice())}})
		if err != nil {
			t.Fatal(err)
		}
		s, c := ca.TLSConfigs(host)
		if i == 0 {
			cliTLS = c
		} else {
			srvTLS = s
		}
	}
	ln, err := lab.Listen(h1, "tcp", net.JoinHostPort(h1.Addr.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.Listen(ctx, transport.ListenConfig{Listener: ln, TLS: srvTLS})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan *transport.Session, 1)
	go func() {
		s, err := l.Accept(ctx)
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- s
	}()
	src, err = transport.Dial(ctx, transport.DialConfig{Addr: ln.Addr().String(), PeerName: "dst", TLS: cliTLS,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return lab.Dial(ctx, h0, network, addr)
		}})
	if err != nil {
		t.Fatal(err)
	}
	dst = <-accepted
	if dst == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { src.Close(); dst.Close() })
	return src, dst
}

// labTransfer sends data over the lab with the pipeline and the given
// policy and returns what arrived.
func labTransfer(t testing.TB, ctx context.Context, src, dst *transport.Session, data []byte, policy pipeline.Policy) []byte {
	t.Helper()
	z, s := zstdcodec.New(), s2codec.New()
	codecs := []pipeline.Codec{{ID: 1, Algorithm: "s2", Codec: s}, {ID: 2, Algorithm: "zstd", Codec: z}}
	var out bytes.Buffer
	var mu sync.Mutex
	var wg sync.WaitGroup
	var dstErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _, dstErr = pipeline.Receive(ctx, dst, pipeline.DestConfig{Codecs: map[string]codec.Codec{"s2": s, "zstd": z},
			Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) {
				return writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) }), nil, nil
			}}, nil)
	}()
	_, err := pipeline.Send(ctx, bytes.NewReader(data), src, pipeline.SourceConfig{Codecs: codecs, Policy: policy, BatchBytes: 256 << 10}, nil)
	wg.Wait()
	if err != nil || dstErr != nil {
		t.Fatalf("send %v, receive %v", err, dstErr)
	}
	return out.Bytes()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// TestWANLabLossyTransferIsByteExact carries 24 MiB over the lab's
// internet-lossy profile (80 ms, 200 Mbit/s, 1 % loss each way) through the
// real transport and pipeline: it must arrive byte for byte.
func TestWANLabLossyTransferIsByteExact(t *testing.T) {
	prof, err := wanlab.LookupProfile("internet-lossy")
	if err != nil {
		t.Fatal(err)
	}
	lab := wanlab.NewTest(t, wanlab.Config{Profile: prof})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src, dst := labSessions(t, ctx, lab)
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	data := p.Bytes(24<<20, 7)
	got := labTransfer(t, ctx, src, dst, data, pipeline.FixedPolicy{Codec: 1, Level: 1})
	if !bytes.Equal(got, data) {
		t.Fatalf("received %d bytes, not the %d sent", len(got), len(data))
	}
	st, _ := lab.LinkStats(lab.Host(0), lab.Host(1))
	if st.LossDrops == 0 {
		t.Fatalf("the lab dropped no packet: the test did not exercise loss (%+v)", st)
	}
	t.Logf("byte-exact through %d dropped packets (%d forwarded)", st.LossDrops, st.Forwarded)
}

// TestWANLabControllerFollowsLinkChange starts a transfer on a 1 Gbit/s,
// 100 ms path (the encoders are the bottleneck: the controller keeps a
// light step) and cuts the link to a twentieth mid-transfer: the link
// becomes the bottleneck and the controller must go heavier within a
// stated time (8 s) of the change.
func TestWANLabControllerFollowsLinkChange(t *testing.T) {
	if raceEnabled {
		t.Skip("the controller reacts to CPU speed, which -race distorts; make test runs this without -race")
	}
	prof, err := wanlab.LookupProfile("wan-100ms-1g")
	if err != nil {
		t.Fatal(err)
	}
	lab := wanlab.NewTest(t, wanlab.Config{Profile: prof})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src, dst := labSessions(t, ctx, lab)
	codecs := []pipeline.Codec{{ID: 1, Algorithm: "s2", Codec: s2codec.New()}, {ID: 2, Algorithm: "zstd", Codec: zstdcodec.New()}}
	path := Path{RTT: prof.RTT, Bandwidth: float64(prof.Rate) / 8, Source: "config"}
	settings, err := Plan(Hybrid, path, codecs, PlanConfig{})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := NewController(ControllerConfig{Settings: settings, Path: path, Thresholds: DefaultThresholds(), Manual: true,
		Sampler: TransportSampler{Session: src}})
	if err != nil {
		t.Fatal(err)
	}
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	data := p.Bytes(256<<20, 3)
	// Cut the rate after 1.2 s; the goroutine is waited for below.
	changed := make(chan time.Time, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-time.After(1200 * time.Millisecond):
		case <-stop:
			return
		}
		link := prof.Link()
		link.Rate /= 20
		if err := lab.SetAll(link); err == nil {
			changed <- time.Now()
		}
	}()
	start := ctl.Status().Step
	got := labTransfer(t, ctx, src, dst, data, ctl)
	close(stop)
	wg.Wait()
	if !bytes.Equal(got, data) {
		t.Fatal("not byte-exact")
	}
	var changedAt time.Time
	select {
	case changedAt = <-changed:
	default:
		t.Fatal("the transfer ended before the link changed: make the data larger")
	}
	var followed *Decision
	for _, d := range ctl.Decisions() {
		if d.Kind == KindLevel && d.At.After(changedAt) {
			d := d
			followed = &d
			break
		}
	}
	t.Logf("started at %s; decisions:\n%s", start, ctl.Summary())
	if followed == nil {
		// Staying put is right only at the mode's heaviest step: the link
		// got slower, so nothing heavier is left to take.
		if heaviest := settings.Ladder[settings.MaxStep].Name; ctl.Status().Step == heaviest {
			t.Logf("already at the heaviest step of the mode (%s) when the link fell: nothing to follow", heaviest)
			return
		}
		t.Fatalf("no level decision after the link fell to a twentieth (step %s)", ctl.Status().Step)
	}
	if lag := followed.At.Sub(changedAt); lag > 8*time.Second {
		t.Fatalf("followed the change after %s, want within 8 s", lag)
	}
	t.Logf("followed the rate change after %s: %s -> %s (%s)", followed.At.Sub(changedAt), followed.From, followed.To, followed.Reason)
}
