package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/certs"
)

// listenerError waits for the listener to report a failed handshake that
// says want ("": any), and returns it (or the last one reported). A refused session
// can cost several handshakes: the data connections dial while the
// control connection opens the session, and those the dialer abandons
// when it fails end in EOF at the listener.
func (e *env) listenerError(t *testing.T, want string) error {
	t.Helper()
	var last error
	timeout := time.After(5 * time.Second)
	for {
		select {
		case err := <-e.errs:
			if want == "" || strings.Contains(err.Error(), want) {
				return err
			}
			last = err
		case <-timeout:
			if last == nil {
				t.Fatal("listener reported no handshake error")
			}
			return last
		}
	}
}

func TestAuthRefusals(t *testing.T) {
	p := testPKI(t)
	other, err := certs.NewCA(certs.CAOptions{CommonName: "another site"})
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Issue(certs.HostRequest{Name: "src", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	strangerDst, err := other.Issue(certs.HostRequest{Name: "dst", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	expired, err := p.ca.Issue(certs.HostRequest{Name: "src", NotBefore: time.Now().Add(-72 * time.Hour), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	strangerSrv, _ := other.TLSConfigs(strangerDst)
	_, strangerCli := other.TLSConfigs(stranger)
	strangerCli.RootCAs = p.ca.Pool() // trusts our CA, but is not from it
	// Go's client only offers a certificate from a CA the server names;
	// a hostile one sends its foreign certificate anyway.
	foreign := stranger.TLSCertificate()
	strangerCli.Certificates = nil
	strangerCli.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }
	_, politeStranger := other.TLSConfigs(stranger)
	politeStranger.RootCAs = p.ca.Pool()
	_, expiredCli := p.ca.TLSConfigs(expired)

	cases := []struct {
		name       string
		lopt       ListenConfig
		dopt       DialConfig
		dialWant   string // in the dialer's error
		listenWant string // in the listener's reported error
	}{
		{
			name:       "client cert from another CA",
			dopt:       DialConfig{TLS: strangerCli},
			dialWant:   "peer rejected the TLS handshake",
			listenWant: "certificate signed by unknown authority",
		},
		{
			name:       "client with only a foreign cert sends none",
			dopt:       DialConfig{TLS: politeStranger},
			dialWant:   "peer rejected the TLS handshake",
			listenWant: "didn't provide a certificate",
		},
		{
			name:       "server cert from another CA",
			lopt:       ListenConfig{TLS: strangerSrv},
			dialWant:   "certificate signed by unknown authority",
			listenWant: "bad certificate",
		},
		{
			name:       "expired client cert",
			dopt:       DialConfig{TLS: expiredCli},
			dialWant:   "peer rejected the TLS handshake",
			listenWant: "expired",
		},
		{
			name:       "wrong peer name",
			dopt:       DialConfig{PeerName: "mallory"},
			dialWant:   "not mallory",
			listenWant: "bad certificate",
		},
		{
			name:       "peer not allowed",
			lopt:       ListenConfig{AllowedPeers: []string{"mallory"}},
			dialWant:   "not among the allowed peers",
			listenWant: "not among the allowed peers",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, c.lopt, c.dopt)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := Dial(ctx, e.dial)
			if err == nil {
				s.Close()
				t.Fatal("dial succeeded")
			}
			if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), c.dialWant) {
				t.Errorf("dialer: %v\nwant ErrAuth and %q", err, c.dialWant)
			}
			lerr := e.listenerError(t, c.listenWant)
			if !errors.Is(lerr, ErrAuth) || !strings.Contains(lerr.Error(), c.listenWant) {
				t.Errorf("listener: %v\nwant ErrAuth and %q", lerr, c.listenWant)
			}
			if st := e.ln.Stats(); st.Sessions != 0 || st.HandshakeErrors == 0 {
				t.Errorf("listener stats %+v", st)
			}
		})
	}
}

func TestTLSConfigChecks(t *testing.T) {
	p := testPKI(t)
	srv, cli := p.configs("src")
	ctx := context.Background()
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1:1"}); err == nil || !strings.Contains(err.Error(), "TLS config required") {
		t.Errorf("dial without TLS: %v", err)
	}
	insecure := cli.Clone()
	insecure.InsecureSkipVerify = true
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1:1", TLS: insecure}); err == nil {
		t.Error("InsecureSkipVerify accepted")
	}
	noCA := srv.Clone()
	noCA.ClientCAs = nil
	if _, err := Listen(ctx, ListenConfig{Addr: "127.0.0.1:0", TLS: noCA}); err == nil {
		t.Error("listener without ClientCAs accepted")
	}
	if _, err := Dial(ctx, DialConfig{Addr: "127.0.0.1:1", TLS: cli, Streams: 65}); err == nil {
		t.Error("65 streams accepted")
	}
}

// TestVersionNegotiation: a peer that speaks only version 2 is refused
// with a clear error; one missing a required capability too.
func TestVersionNegotiation(t *testing.T) {
	if v, r := pickVersion([]uint32{1, 2, 7}, requiredV1); v != 1 || r != nil {
		t.Errorf("pickVersion([1 2 7]) = %d, %v", v, r)
	}
	e := newEnv(t, ListenConfig{}, DialConfig{})
	for _, c := range []struct {
		versions []uint32
		caps     []string
		want     string
	}{
		{[]uint32{2, 3}, requiredV1, "no common protocol version: peer speaks [2 3], we speak [1]"},
		{[]uint32{1}, []string{capCRC32C, capResume}, `requires capability "priority-lane"`},
	} {
		w := rawOpen(t, e, c.versions, c.caps)
		r := w.GetRefusal()
		if r == nil || !strings.Contains(r.GetMessage(), c.want) {
			t.Errorf("versions %v caps %v: welcome %v, want refusal %q", c.versions, c.caps, w, c.want)
		}
		if err := refusalError(r); !errors.Is(err, ErrIncompatible) {
			t.Errorf("refusal error %v does not match ErrIncompatible", err)
		}
		if lerr := e.listenerError(t, ""); !errors.Is(lerr, ErrIncompatible) {
			t.Errorf("listener: %v", lerr)
		}
	}
}
