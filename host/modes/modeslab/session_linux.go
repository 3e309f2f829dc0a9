//go:build linux

package modeslab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/dwcp/dwcp/host/certs"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/transport"
	"github.com/dwcp/dwcp/host/wanlab"
)

// Certs are the two ends' TLS configurations, from one fresh CA. Minting a
// CA costs a key generation; experiments that open many sessions share one.
type Certs struct {
	server, client *tls.Config
}

// NewCerts mints a CA and a certificate for each lab host: h0 dials as
// "src", h1 listens as "dst".
func NewCerts(lab *wanlab.Lab) (*Certs, error) {
	ca, err := certs.NewCA(certs.CAOptions{CommonName: "modeslab CA"})
	if err != nil {
		return nil, fmt.Errorf("lab certificates: %w", err)
	}
	c := &Certs{}
	for i, name := range []string{"src", "dst"} {
		h := lab.Host(i)
		host, err := ca.Issue(certs.HostRequest{Name: name, IPs: []net.IP{net.IP(h.Addr.AsSlice())}})
		if err != nil {
			return nil, fmt.Errorf("lab certificate for %s: %w", name, err)
		}
		s, cl := ca.TLSConfigs(host)
		if i == 0 {
			c.client = cl
		} else {
			c.server = s
		}
	}
	return c, nil
}

// SessionOptions configure OpenSessions.
type SessionOptions struct {
	// Certs default to a fresh CA.
	Certs *Certs
	// Streams is the number of data connections (default: the transport's).
	Streams int
	// Transport options of the dialling side.
	Transport transport.Options
}

// Pair is a transport session from lab host 0 (Src) to lab host 1 (Dst).
// Loss tracks Src's TCP connections, as a migration's source does, for the
// probe's loss estimate and the controller's passive one.
type Pair struct {
	Src, Dst *transport.Session
	Loss     *modes.ConnLoss

	ln *transport.Listener
}

// OpenSessions dials a session from h0 to h1 through the shaped link.
func OpenSessions(ctx context.Context, lab *wanlab.Lab, opts SessionOptions) (*Pair, error) {
	c := opts.Certs
	if c == nil {
		var err error
		if c, err = NewCerts(lab); err != nil {
			return nil, err
		}
	}
	h0, h1 := lab.Host(0), lab.Host(1)
	nl, err := lab.Listen(h1, "tcp", net.JoinHostPort(h1.Addr.String(), "0"))
	if err != nil {
		return nil, fmt.Errorf("open lab sessions: listen on %s: %w", h1, err)
	}
	ln, err := transport.Listen(ctx, transport.ListenConfig{Listener: nl, TLS: c.server})
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("open lab sessions: %w", err)
	}
	type accepted struct {
		s   *transport.Session
		err error
	}
	acc := make(chan accepted, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s, err := ln.Accept(ctx)
		acc <- accepted{s, err}
	}()
	p := &Pair{Loss: &modes.ConnLoss{}, ln: ln}
	p.Src, err = transport.Dial(ctx, transport.DialConfig{
		Addr: nl.Addr().String(), PeerName: "dst", TLS: c.client, Streams: opts.Streams, Options: opts.Transport,
		Dial: p.Loss.WrapDial(func(ctx context.Context, network, addr string) (net.Conn, error) {
			return lab.Dial(ctx, h0, network, addr)
		}),
	})
	if err != nil {
		ln.Close() // ends the Accept
		wg.Wait()
		if a := <-acc; a.s != nil {
			a.s.Close()
		}
		return nil, fmt.Errorf("open lab sessions: dial %s from %s: %w", h1, h0, err)
	}
	wg.Wait()
	a := <-acc
	if a.err != nil {
		p.Src.Close()
		ln.Close()
		return nil, fmt.Errorf("open lab sessions: accept on %s: %w", h1, a.err)
	}
	p.Dst = a.s
	return p, nil
}

// Close ends both sessions and the listener.
func (p *Pair) Close() error {
	return errors.Join(p.Src.Close(), p.Dst.Close(), p.ln.Close())
}

// Probe runs the session-start probe over the pair (Src probes, Dst
// answers) with the pair's loss tracking unless cfg brings its own.
func (p *Pair) Probe(ctx context.Context, cfg modes.ProbeConfig) (modes.ProbeResult, error) {
	if cfg.Loss == nil {
		cfg.Loss = p.Loss
	}
	type answered struct {
		leftover []byte
		err      error
	}
	done := make(chan answered, 1)
	go func() {
		l, err := modes.Respond(ctx, p.Dst)
		done <- answered{l, err}
	}()
	res, err := modes.Probe(ctx, p.Src, cfg)
	if err != nil {
		// The responder ends on the probe's error message or on ctx; the
		// session is closed to make sure it does not wait for more.
		p.Src.Close()
		p.Dst.Close()
		<-done
		return res, fmt.Errorf("lab probe: %w", err)
	}
	a := <-done
	if a.err != nil {
		return res, fmt.Errorf("lab probe: responder: %w", a.err)
	}
	if a.leftover != nil {
		return res, fmt.Errorf("lab probe: responder got a %d-byte non-probe message", len(a.leftover))
	}
	return res, nil
}
