package shm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Test ops understood by testHandler (and so by the child process).
const (
	opEcho  uint32 = 1 // out = in
	opXor   uint32 = 2 // out[i] = in[i] ^ byte(arg)
	opFail  uint32 = 3 // fails with code arg and message in
	opSleep uint32 = 4 // sleeps arg milliseconds, then echoes
	opExit  uint32 = 5 // the process exits with status arg (a crash mid-call)
	opBadN  uint32 = 6 // claims to have written len(out)+1 bytes
)

func testHandler(op uint32, arg int64, in, out []byte) (int, uint32, string) {
	switch op {
	case opEcho:
		return copy(out, in), 0, ""
	case opXor:
		if len(out) < len(in) {
			return 0, 1, "output too small"
		}
		for i, b := range in {
			out[i] = b ^ byte(arg)
		}
		return len(in), 0, ""
	case opFail:
		return 0, uint32(arg), string(in)
	case opSleep:
		time.Sleep(time.Duration(arg) * time.Millisecond)
		return copy(out, in), 0, ""
	case opExit:
		os.Exit(int(arg))
	case opBadN:
		return len(out) + 1, 0, ""
	}
	return 0, 2, fmt.Sprintf("unknown op %d", op)
}

// childMain is the plugin process of TestChildProcess*: fd 3 is the plugin
// end of the socketpair (the first of exec.Cmd.ExtraFiles).
func childMain() int {
	err := Serve(context.Background(), os.NewFile(3, "shm-plugin"), testHandler, 8)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// startServe runs Serve on a goroutine over a fresh pair and returns the
// connected Client. Cleanup closes the client and checks Serve returned nil.
func startServe(t testing.TB, opts ClientOptions, h Handler, workers int) *Client {
	t.Helper()
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- Serve(context.Background(), plug, h, workers) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, host, opts)
	if err != nil {
		t.Fatalf("NewClient: %v (serve: %v)", err, <-errc)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("Serve after host close: %v, want nil", err)
		}
	})
	return c
}

// fakePlugin is a hand-driven plugin end, for feeding the client messages a
// real Serve would never send.
type fakePlugin struct {
	conn *net.UnixConn
	mem  []byte
	g    geometry
}

// acceptFake does the plugin half of the handshake by hand.
func acceptFake(f *os.File) (*fakePlugin, error) {
	uc, err := seqpacketConn(f)
	if err != nil {
		return nil, err
	}
	var msg [maxMessage]byte
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(msg[:], oob)
	if err != nil {
		uc.Close()
		return nil, err
	}
	fds, err := receivedFDs(oob[:oobn])
	if err != nil || len(fds) != 1 {
		uc.Close()
		return nil, fmt.Errorf("fds %v: %v", fds, err)
	}
	defer closeFDs(fds)
	h, err := decodeHello(msg[:n])
	if err != nil {
		uc.Close()
		return nil, err
	}
	mem, err := mapArena(fds[0], h.geometry)
	if err != nil {
		uc.Close()
		return nil, err
	}
	return &fakePlugin{conn: uc, mem: mem, g: h.geometry}, nil
}

func (p *fakePlugin) sendAck(status uint32) error {
	var b [ackSize]byte
	encodeAck(b[:], ack{version: protocolVersion, status: status})
	_, err := p.conn.Write(b[:])
	return err
}

func (p *fakePlugin) readRequest() (request, error) {
	var b [maxMessage]byte
	n, err := p.conn.Read(b[:])
	if err != nil {
		return request{}, err
	}
	return decodeRequest(b[:n])
}

func (p *fakePlugin) complete(c completion) error {
	var b [completionSize]byte
	encodeCompletion(b[:], c)
	_, err := p.conn.Write(b[:])
	return err
}

func (p *fakePlugin) close() {
	p.conn.Close()
	unix.Munmap(p.mem)
}

// withFake connects a Client to a fakePlugin that acknowledges and then runs
// script on its own goroutine. Cleanup closes both and waits for script.
func withFake(t *testing.T, opts ClientOptions, script func(p *fakePlugin)) *Client {
	t.Helper()
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		p, err := acceptFake(plug)
		if err != nil {
			t.Errorf("fake plugin accept: %v", err)
			return
		}
		defer p.close()
		if err := p.sendAck(ackOK); err != nil {
			t.Errorf("fake plugin ack: %v", err)
			return
		}
		script(p)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, host, opts)
	if err != nil {
		wg.Wait()
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() {
		c.Close()
		wg.Wait()
	})
	return c
}

// rawHost is a hand-driven host end, for feeding Serve messages a real
// Client would never send.
type rawHost struct {
	conn *net.UnixConn
	errc chan error // Serve's result
}

// serveRaw starts Serve (counting handler calls in calls) against a rawHost.
func serveRaw(t *testing.T, calls *int64, mu *sync.Mutex) *rawHost {
	t.Helper()
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		mu.Lock()
		*calls++
		mu.Unlock()
		return testHandler(op, arg, in, out)
	}
	r := &rawHost{errc: make(chan error, 1)}
	go func() { r.errc <- Serve(context.Background(), plug, h, 2) }()
	r.conn, err = seqpacketConn(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.conn.Close() })
	return r
}

// hello sends a hello for g with the given descriptors attached.
func (r *rawHost) hello(h hello, fds ...int) error {
	var b [helloSize]byte
	encodeHello(b[:], h)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := r.conn.WriteMsgUnix(b[:], oob, nil)
	return err
}

// handshake does a correct hello/ack for g and returns the host's mapping.
func (r *rawHost) handshake(t *testing.T, g geometry) []byte {
	t.Helper()
	fd, mem, err := createArena(g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	err = r.hello(hello{version: protocolVersion, geometry: g, arenaSize: g.size()}, fd)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.readAck()
	if err != nil || a.status != ackOK {
		t.Fatalf("ack %+v, %v", a, err)
	}
	return mem
}

func (r *rawHost) readAck() (ack, error) {
	var b [maxMessage]byte
	r.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := r.conn.Read(b[:])
	if err != nil {
		return ack{}, err
	}
	return decodeAck(b[:n])
}

// serveErr waits for Serve's result, failing the test if it hangs.
func (r *rawHost) serveErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.errc:
		return err
	case <-time.After(10 * time.Second):
		r.conn.Close()
		t.Fatal("Serve did not return")
		return nil
	}
}

// isClosedProtocol reports whether err says the channel died of a protocol
// violation.
func isClosedProtocol(err error) bool {
	return errors.Is(err, ErrClosed) && errors.Is(err, ErrProtocol)
}
