package codecbench

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/transport"
)

// loopback is two DWCP hosts on this machine: a transport listener ("dst")
// and the configuration to dial it ("src"), with certificates of a site CA
// minted for the run; plus plain TCP and TLS listeners for the relay
// baselines over the same loopback interface.
type loopback struct {
	ln     *transport.Listener
	dial   transport.DialConfig
	srvTLS *tls.Config
	cliTLS *tls.Config
	tcp    net.Listener
}

// newLoopback starts the listeners. sessions bounds the transport sessions
// open at once.
func newLoopback(ctx context.Context, sessions int) (*loopback, error) {
	ca, err := certs.NewCA(certs.CAOptions{CommonName: "codecbench site CA"})
	if err != nil {
		return nil, err
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	src, err := ca.Issue(certs.HostRequest{Name: "src", IPs: lo})
	if err != nil {
		return nil, err
	}
	dst, err := ca.Issue(certs.HostRequest{Name: "dst", IPs: lo})
	if err != nil {
		return nil, err
	}
	l := &loopback{}
	l.srvTLS, _ = ca.TLSConfigs(dst)
	_, l.cliTLS = ca.TLSConfigs(src)
	l.cliTLS.ServerName = "dst"
	l.ln, err = transport.Listen(ctx, transport.ListenConfig{
		Addr: "127.0.0.1:0", TLS: l.srvTLS,
		MaxSessionsPerPeer: sessions + 1, AcceptBacklog: sessions + 1, MaxHandshakes: 4 * transport.DefaultMaxHandshakes,
	})
	if err != nil {
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	l.dial = transport.DialConfig{Addr: l.ln.Addr().String(), PeerName: "dst", TLS: l.cliTLS}
	var lc net.ListenConfig
	if l.tcp, err = lc.Listen(ctx, "tcp", "127.0.0.1:0"); err != nil {
		l.ln.Close()
		return nil, fmt.Errorf("listen on loopback: %w", err)
	}
	return l, nil
}

func (l *loopback) Close() {
	l.ln.Close()
	l.tcp.Close()
}

// dwcpPair is one transport session seen from both ends.
type dwcpPair struct {
	cli, srv *transport.Session
}

// session opens a transport session with the given data connections.
func (l *loopback) session(ctx context.Context, streams int) (*dwcpPair, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	type res struct {
		s   *transport.Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := l.ln.Accept(ctx)
		ch <- res{s, err}
	}()
	d := l.dial
	d.Streams = streams
	cli, err := transport.Dial(ctx, d)
	if err != nil {
		cancel()
		if r := <-ch; r.s != nil {
			r.s.Close()
		}
		return nil, fmt.Errorf("dial loopback session: %w", err)
	}
	r := <-ch
	if r.err != nil {
		cli.Close()
		return nil, fmt.Errorf("accept loopback session: %w", r.err)
	}
	return &dwcpPair{cli: cli, srv: r.s}, nil
}

func (p *dwcpPair) Close() {
	p.cli.Close()
	p.srv.Close()
}

// transferResult is one stream carried by the pipeline.
type transferResult struct {
	Elapsed time.Duration
	Summary pipeline.Summary
	// Encode is each batch's compression time (one worker).
	Encode []time.Duration
}

// run carries data through pipeline.Send on the dialing end and
// pipeline.Receive on the accepting end, and checks that the destination
// delivered exactly data. The time runs from the start of Send until both
// ends have returned (the source has the destination's confirmation that
// every byte was verified and delivered).
func (p *dwcpPair) run(ctx context.Context, data []byte, src pipeline.SourceConfig, dst pipeline.DestConfig) (transferResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rec := &recorder{inner: src.Policy}
	src.Policy = rec
	src.ExpectedLength = uint64(len(data))
	chk := &checker{want: data}
	dst.Accept = func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) { return chk, nil, nil }
	var wg sync.WaitGroup
	var dstErr error
	start := time.Now()
	wg.Go(func() {
		_, _, dstErr = pipeline.Receive(ctx, p.srv, dst, nil)
		if dstErr != nil {
			cancel()
		}
	})
	sum, err := pipeline.Send(ctx, bytes.NewReader(data), p.cli, src, nil)
	if err != nil {
		cancel()
	}
	wg.Wait()
	res := transferResult{Elapsed: time.Since(start), Summary: sum, Encode: rec.encode}
	switch {
	case err != nil:
		return res, fmt.Errorf("pipeline send: %w", err)
	case dstErr != nil:
		return res, fmt.Errorf("pipeline receive: %w", dstErr)
	}
	return res, chk.complete()
}

// recorder keeps each batch's encode time and passes everything on.
type recorder struct {
	inner  pipeline.Policy
	encode []time.Duration
}

func (r *recorder) Choose() pipeline.Choice { return r.inner.Choose() }

func (r *recorder) Observe(b pipeline.BatchResult) {
	// Observe is never called concurrently with itself, and the slice is
	// read only after Send returned.
	r.encode = append(r.encode, b.Encode)
	r.inner.Observe(b)
}

// checker is the destination's output: it compares what arrives with the
// input, so every measured transfer is also a correctness check.
type checker struct {
	want []byte
	n    int
}

func (c *checker) Write(p []byte) (int, error) {
	if len(p) > len(c.want)-c.n || !bytes.Equal(p, c.want[c.n:c.n+len(p)]) {
		return 0, fmt.Errorf("delivered bytes differ from the input after offset %d", c.n)
	}
	c.n += len(p)
	return len(p), nil
}

func (c *checker) complete() error {
	if c.n != len(c.want) {
		return fmt.Errorf("delivered %d of %d bytes", c.n, len(c.want))
	}
	return nil
}

// relayPair is a plain relay: one TCP connection, with or without TLS 1.3
// (the transport's certificates), moving bytes with io.Copy and no other
// processing.
type relayPair struct {
	w, r net.Conn
}

// relay opens a connection pair and completes the TLS handshake, so that
// run times the bytes only, as dwcpPair.run does.
func (l *loopback) relay(ctx context.Context, useTLS bool) (*relayPair, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.tcp.Accept()
		ch <- res{c, err}
	}()
	var d net.Dialer
	w, err := d.DialContext(ctx, "tcp", l.tcp.Addr().String())
	if err != nil {
		// Unblock the accept with a connection of our own.
		if c, derr := d.DialContext(context.WithoutCancel(ctx), "tcp", l.tcp.Addr().String()); derr == nil {
			c.Close()
		}
		if r := <-ch; r.c != nil {
			r.c.Close()
		}
		return nil, fmt.Errorf("dial relay: %w", err)
	}
	r := <-ch
	if r.err != nil {
		w.Close()
		return nil, fmt.Errorf("accept relay: %w", r.err)
	}
	p := &relayPair{w: w, r: r.c}
	if !useTLS {
		return p, nil
	}
	tw := tls.Client(w, l.cliTLS)
	tr := tls.Server(r.c, l.srvTLS)
	p.w, p.r = tw, tr
	errc := make(chan error, 1)
	go func() { errc <- tr.HandshakeContext(ctx) }()
	err = tw.HandshakeContext(ctx)
	if serr := <-errc; err == nil {
		err = serr
	}
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("relay TLS handshake: %w", err)
	}
	return p, nil
}

func (p *relayPair) Close() {
	p.w.Close()
	p.r.Close()
}

// run writes data on one end and reads it on the other until the writer's
// end of stream, checking every byte; the time runs until the last byte
// was read.
func (p *relayPair) run(ctx context.Context, data []byte) (time.Duration, error) {
	stop := context.AfterFunc(ctx, func() { p.Close() })
	defer stop()
	chk := &checker{want: data}
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(p.w, bytes.NewReader(data))
		if err == nil {
			err = closeWrite(p.w)
		}
		errc <- err
	}()
	_, rerr := io.Copy(chk, p.r)
	elapsed := time.Since(start)
	werr := <-errc
	if err := errors.Join(werr, rerr); err != nil {
		return elapsed, fmt.Errorf("relay: %w", err)
	}
	return elapsed, chk.complete()
}

func closeWrite(c net.Conn) error {
	switch c := c.(type) {
	case *tls.Conn:
		return c.CloseWrite()
	case *net.TCPConn:
		return c.CloseWrite()
	}
	return c.Close()
}
