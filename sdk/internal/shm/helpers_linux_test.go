package shm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
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

// fakePlugin is a hand-driven plugin end, for feeding the client messages
// and records a real Serve would never send.
type fakePlugin struct {
	conn *net.UnixConn
	mem  []byte
	g    geometry
	wake int      // the host-wake eventfd
	seen []uint32 // last request sequence read per slot
	gone bool     // the host closed the socket (seen by pause)
}

// acceptFake does the plugin half of the handshake by hand.
func acceptFake(f *os.File) (*fakePlugin, error) {
	uc, err := seqpacketConn(f)
	if err != nil {
		return nil, err
	}
	var msg [maxMessage]byte
	oob := make([]byte, unix.CmsgSpace(8))
	n, oobn, _, _, err := uc.ReadMsgUnix(msg[:], oob)
	if err != nil {
		uc.Close()
		return nil, err
	}
	fds, err := receivedFDs(oob[:oobn])
	if err != nil || len(fds) != 2 {
		uc.Close()
		closeFDs(fds)
		return nil, fmt.Errorf("fds %v: %v", fds, err)
	}
	defer closeFDs(fds[:1])
	h, err := decodeHello(msg[:n])
	if err != nil {
		uc.Close()
		return nil, err
	}
	mem, err := mapArena(fds[0], h.geometry)
	if err != nil {
		uc.Close()
		unix.Close(fds[1])
		return nil, err
	}
	return &fakePlugin{conn: uc, mem: mem, g: h.geometry, wake: fds[1], seen: make([]uint32, h.slots)}, nil
}

func (p *fakePlugin) sendAck(status uint32) error {
	var b [ackSize]byte
	encodeAck(b[:], ack{version: protocolVersion, status: status})
	_, err := p.conn.Write(b[:])
	return err
}

// readRequest polls the control area (no doorbell: a test can afford it)
// until a new request is posted on some slot, or the host closes the
// socket (the wait between polls is a read on it).
func (p *fakePlugin) readRequest() (uint32, request, error) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); p.pause() {
		for i := range p.g.slots {
			ctl := p.g.ctlOff(i)
			seq := atomic.LoadUint32(word(p.mem, ctl+slotReqSeq))
			if seq == p.seen[i] {
				continue
			}
			p.seen[i] = seq
			r, err := decodeRequest(p.mem[ctl+slotReq:ctl+slotReq+requestSize], p.g, seq)
			return i, r, err
		}
		if p.gone {
			return 0, request{}, errors.New("fake plugin: the host closed the socket")
		}
	}
	return 0, request{}, errors.New("fake plugin: no request within 10 s")
}

// pause waits 100 µs for the host to close the socket. Once it has, the
// next readRequest returns at once instead of polling for 10 s.
func (p *fakePlugin) pause() {
	var b [maxMessage]byte
	p.conn.SetReadDeadline(time.Now().Add(100 * time.Microsecond))
	if _, err := p.conn.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		p.gone = true
	}
}

// complete publishes rec as slot's completion record, the way Serve does:
// sequence last, then a host-wake (unconditionally: a spurious one must
// be harmless too).
func (p *fakePlugin) complete(slot uint32, rec [completionSize]byte) {
	ctl := p.g.ctlOff(slot)
	copy(p.mem[ctl+slotDone+4:ctl+slotDone+completionSize], rec[4:])
	atomic.StoreUint32(word(p.mem, ctl+slotDoneSeq), le.Uint32(rec[:]))
	p.wakeHost()
}

// wakeHost adds 1 to the host-wake eventfd.
func (p *fakePlugin) wakeHost() {
	var one [8]byte
	le.PutUint64(one[:], 1)
	unix.Write(p.wake, one[:])
}

func (p *fakePlugin) completeWith(slot uint32, c completion) {
	var rec [completionSize]byte
	encodeCompletion(rec[:], c)
	p.complete(slot, rec)
}

// hangup waits until the host closes the socket.
func (p *fakePlugin) hangup() {
	var b [maxMessage]byte
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	p.conn.Read(b[:])
}

func (p *fakePlugin) close() {
	p.conn.Close()
	unix.Munmap(p.mem)
	unix.Close(p.wake)
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
	wake int        // the host-wake eventfd sent with a version-4 hello
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
	return r.handshakeVersion(t, g, protocolVersion)
}

// handshakeVersion is handshake speaking protocol version v; the plugin
// must answer in v.
func (r *rawHost) handshakeVersion(t *testing.T, g geometry, v uint32) []byte {
	t.Helper()
	fd, mem, err := createArena(g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	fds := []int{fd}
	if v >= eventfdVersion {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		r.wake = efd
		t.Cleanup(func() { unix.Close(efd) })
		fds = append(fds, efd)
	}
	err = r.hello(hello{version: v, geometry: g, arenaSize: g.size()}, fds...)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	a, err := r.readAck()
	if err != nil || a.status != ackOK || a.version != v {
		t.Fatalf("ack %+v, %v", a, err)
	}
	return mem
}

// post writes request r into slot's control block and rings the doorbell,
// as the Client does.
func (r *rawHost) post(mem []byte, g geometry, slot uint32, req request) {
	var rec [requestSize]byte
	encodeRequest(rec[:], req)
	r.postRaw(mem, g, slot, rec)
}

// postRaw publishes any request record, sequence last.
func (r *rawHost) postRaw(mem []byte, g geometry, slot uint32, rec [requestSize]byte) {
	ctl := g.ctlOff(slot)
	copy(mem[ctl+slotReq+4:ctl+slotReq+requestSize], rec[4:])
	atomic.StoreUint32(word(mem, ctl+slotReqSeq), le.Uint32(rec[:]))
	bump(word(mem, hdrDoorbell), 1)
}

// awaitDone polls slot's completion sequence until it is seq.
func (r *rawHost) awaitDone(t *testing.T, mem []byte, g geometry, slot, seq uint32) completion {
	t.Helper()
	ctl := g.ctlOff(slot)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		if atomic.LoadUint32(word(mem, ctl+slotDoneSeq)) == seq {
			c, err := decodeCompletion(mem[ctl+slotDone:ctl+slotDone+completionSize], seq, math.MaxUint32, MaxErrorMessage)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	t.Fatalf("no completion of slot %d seq %d", slot, seq)
	return completion{}
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
