package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dwcp/dwcp/host/certs"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// pki is a site CA and hosts, minted once per test binary.
type pki struct {
	ca    *certs.CA
	hosts map[string]*certs.Host
}

var (
	pkiOnce sync.Once
	sitePKI *pki
	pkiErr  error
)

func testPKI(t testing.TB) *pki {
	t.Helper()
	pkiOnce.Do(func() {
		ca, err := certs.NewCA(certs.CAOptions{CommonName: "test site CA"})
		if err != nil {
			pkiErr = err
			return
		}
		p := &pki{ca: ca, hosts: map[string]*certs.Host{}}
		for _, n := range []string{"src", "dst", "mallory"} {
			h, err := ca.Issue(certs.HostRequest{Name: n, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
			if err != nil {
				pkiErr = err
				return
			}
			p.hosts[n] = h
		}
		sitePKI = p
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return sitePKI
}

func (p *pki) configs(name string) (server, client *tls.Config) {
	return p.ca.TLSConfigs(p.hosts[name])
}

// env is a listener ("dst") and the configuration to dial it as "src".
type env struct {
	t    testing.TB
	ln   *Listener
	dial DialConfig
	errs chan error // listener handshake errors
}

func newEnv(t testing.TB, lopt ListenConfig, dopt DialConfig) *env {
	t.Helper()
	p := testPKI(t)
	srvTLS, _ := p.configs("dst")
	_, cliTLS := p.configs("src")
	e := &env{t: t, errs: make(chan error, 64)}
	if lopt.TLS == nil {
		lopt.TLS = srvTLS
	}
	if lopt.Listener == nil && lopt.Addr == "" {
		lopt.Addr = "127.0.0.1:0"
	}
	lopt.OnHandshakeError = func(_ net.Addr, err error) {
		select {
		case e.errs <- err:
		default:
		}
	}
	ln, err := Listen(context.Background(), lopt)
	if err != nil {
		t.Fatal(err)
	}
	e.ln = ln
	t.Cleanup(func() { ln.Close() })
	if dopt.TLS == nil {
		dopt.TLS = cliTLS
	}
	if dopt.Addr == "" {
		dopt.Addr = ln.Addr().String()
	}
	if dopt.PeerName == "" {
		dopt.PeerName = "dst"
	}
	e.dial = dopt
	return e
}

// pair dials and accepts one session.
func (e *env) pair() (cli, srv *Session) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := e.ln.Accept(ctx)
		ch <- res{s, err}
	}()
	cli, err := Dial(ctx, e.dial)
	if err != nil {
		e.t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		cli.Close()
		e.t.Fatal(r.err)
	}
	e.t.Cleanup(func() { cli.Close(); r.s.Close() })
	return cli, r.s
}

// message builds message i of a stream: its index, then bytes that depend
// on (stream, i), so the receiver can check every byte without a copy of
// what was sent.
func message(stream uint64, i uint64, maxSize int) []byte {
	r := rand.New(rand.NewPCG(stream, i))
	n := 8 + r.IntN(maxSize-8+1)
	if r.IntN(8) == 0 {
		n = 8 + r.IntN(64) // plenty of small ones too
	}
	b := make([]byte, n)
	binary.BigEndian.PutUint64(b, i)
	j := 8
	for ; j+8 <= n; j += 8 {
		binary.LittleEndian.PutUint64(b[j:], r.Uint64())
	}
	for v := r.Uint64(); j < n; j++ {
		b[j] = byte(v)
		v >>= 8
	}
	return b
}

func checkMessage(stream, i uint64, maxSize int, got []byte) error {
	want := message(stream, i, maxSize)
	if len(got) != len(want) {
		return errors.New("length differs from what was sent")
	}
	if binary.BigEndian.Uint64(got) != i {
		return errors.New("out of order: index differs")
	}
	if !bytes.Equal(got, want) {
		return errors.New("content differs from what was sent")
	}
	return nil
}

// sendN sends count messages of stream on the bulk lane, then CloseWrite.
func sendN(ctx context.Context, s *Session, stream uint64, count int, maxSize int) error {
	for i := range count {
		if err := s.Send(ctx, message(stream, uint64(i), maxSize)); err != nil {
			return err
		}
	}
	return nil
}

// recvAll receives until io.EOF and checks every message.
func recvAll(ctx context.Context, s *Session, stream uint64, maxSize int) (int, error) {
	n := 0
	for {
		m, err := s.Recv(ctx)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if err := checkMessage(stream, uint64(n), maxSize, m); err != nil {
			return n, errors.Join(err, fmt.Errorf("at message %d", n))
		}
		n++
	}
}


// group runs functions and returns the first error (errgroup without the
// dependency).
type group struct {
	wg   sync.WaitGroup
	once sync.Once
	err  error
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.once.Do(func() { g.err = err })
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	return g.err
}
