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

// Test messages: message i of a stream is one of 97 random bodies of
// random sizes (picked by i), with i in its first 8 bytes, so the receiver
// can check every byte and the order without a copy of what was sent, and
// the test spends its CPU on the transport rather than on making data.
const setSize = 97

var (
	setsMu sync.Mutex
	sets   = map[[2]uint64][][]byte{}
)

func msgSet(stream uint64, maxSize int) [][]byte {
	setsMu.Lock()
	defer setsMu.Unlock()
	key := [2]uint64{stream, uint64(maxSize)}
	if m, ok := sets[key]; ok {
		return m
	}
	r := rand.New(rand.NewPCG(stream, uint64(maxSize)))
	m := make([][]byte, setSize)
	for k := range m {
		n := 8 + r.IntN(maxSize-8+1)
		if r.IntN(8) == 0 {
			n = 8 + r.IntN(64) // plenty of small ones too
		}
		b := make([]byte, n)
		j := 8
		for ; j+8 <= n; j += 8 {
			binary.LittleEndian.PutUint64(b[j:], r.Uint64())
		}
		for v := r.Uint64(); j < n; j++ {
			b[j] = byte(v)
			v >>= 8
		}
		m[k] = b
	}
	sets[key] = m
	return m
}

// message returns message i of stream in a fresh slice.
func message(stream uint64, i uint64, maxSize int) []byte {
	return appendMessage(nil, stream, i, maxSize)
}

func appendMessage(dst []byte, stream uint64, i uint64, maxSize int) []byte {
	b := msgSet(stream, maxSize)[i%setSize]
	dst = append(dst[:0], b...)
	binary.BigEndian.PutUint64(dst, i)
	return dst
}

func checkMessage(stream, i uint64, maxSize int, got []byte) error {
	want := msgSet(stream, maxSize)[i%setSize]
	if len(got) != len(want) {
		return fmt.Errorf("length %d differs from the %d bytes sent", len(got), len(want))
	}
	if idx := binary.BigEndian.Uint64(got); idx != i {
		return fmt.Errorf("out of order: got message %d", idx)
	}
	if !bytes.Equal(got[8:], want[8:]) {
		return errors.New("content differs from what was sent")
	}
	return nil
}

// sendN sends count messages of stream on the bulk lane, then CloseWrite.
func sendN(ctx context.Context, s *Session, stream uint64, count int, maxSize int) error {
	var buf []byte
	for i := range count {
		buf = appendMessage(buf, stream, uint64(i), maxSize)
		if err := s.Send(ctx, buf); err != nil {
			return err
		}
	}
	return nil
}

// recvAll receives until io.EOF and checks every message.
func recvAll(ctx context.Context, s *Session, stream uint64, maxSize int) (int, error) {
	n := 0
	var m []byte
	for {
		var err error
		m, err = s.RecvAppend(ctx, m[:0])
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

// silentConns opens n connections to the listener that never speak, and
// waits until they hold n of its handshake slots. The test closes them.
func (e *env) silentConns(t *testing.T, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("tcp", e.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	for deadline := time.Now().Add(5 * time.Second); e.ln.Stats().InHandshake < n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d silent connections never took the handshake slots: %+v", n, e.ln.Stats())
		}
	}
	return conns
}
