package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTripSizes(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 64 << 10, SlotOutput: 64 << 10}, testHandler, 2)
	maxIn, maxOut := c.Limits()
	if maxIn != 64<<10 || maxOut != 64<<10 {
		t.Fatalf("Limits = %d, %d", maxIn, maxOut)
	}
	r := rand.New(rand.NewPCG(1, 2))
	ctx := testCtx(t)
	for _, n := range []int{0, 1, 7, 4095, 4096, 4097, 65535, 64 << 10} {
		in := randBytes(r, n)
		prefix := []byte("keep")
		got, err := c.Call(ctx, opEcho, 0, in, bytes.Clone(prefix), n)
		if err != nil {
			t.Fatalf("echo %d: %v", n, err)
		}
		if !bytes.Equal(got, append(prefix, in...)) {
			t.Fatalf("echo %d: output differs (len %d)", n, len(got))
		}
		got, err = c.Call(ctx, opXor, int64(n), in, nil, maxOut)
		if err != nil {
			t.Fatalf("xor %d: %v", n, err)
		}
		for i := range in {
			if got[i] != in[i]^byte(n) {
				t.Fatalf("xor %d: byte %d is %#x, want %#x", n, i, got[i], in[i]^byte(n))
			}
		}
		// maxOut smaller than the input: the handler sees a short buffer.
		if n > 0 {
			got, err = c.Call(ctx, opEcho, 0, in, nil, n/2)
			if err != nil || !bytes.Equal(got, in[:n/2]) {
				t.Fatalf("short echo %d: len %d, %v", n, len(got), err)
			}
		}
	}
}

func TestConcurrentCallers(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 8, SlotInput: 16 << 10}, testHandler, 4)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 99))
			var dst []byte
			for i := range 40 {
				in := randBytes(r, r.IntN(16<<10+1))
				arg := int64(g*1000 + i)
				var err error
				dst, err = c.Call(ctx, opXor, arg, in, dst[:0], len(in))
				if err != nil {
					t.Errorf("caller %d call %d: %v", g, i, err)
					return
				}
				for j := range in {
					if dst[j] != in[j]^byte(arg) {
						t.Errorf("caller %d call %d: byte %d wrong: another request's data", g, i, j)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

// TestRequestPublishedWhole: many tiny calls of varying length on few
// slots keep workers scanning the control area while requests are posted,
// so a worker that could see a new sequence with an old field (length,
// op, arg) would return a wrong length or wrong bytes here.
func TestRequestPublishedWhole(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 4)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			dst := make([]byte, 0, 64)
			for i := range 5000 {
				in := randBytes(r, r.IntN(65))
				arg := int64(r.IntN(256))
				var err error
				if dst, err = c.Call(ctx, opXor, arg, in, dst[:0], len(in)); err != nil {
					t.Errorf("caller %d call %d: %v", g, i, err)
					return
				}
				if len(dst) != len(in) {
					t.Errorf("caller %d call %d: %d bytes, want %d", g, i, len(dst), len(in))
					return
				}
				for j := range in {
					if dst[j] != in[j]^byte(arg) {
						t.Errorf("caller %d call %d: byte %d wrong", g, i, j)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestCancelInFlightKeepsSlot(t *testing.T) {
	const opBlock = 100
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		if op == opBlock {
			entered <- struct{}{}
			<-release
			// The host has given up on this request; the slot must still be
			// ours to write.
			for i := range out {
				out[i] = 0xAB
			}
			return len(out), 0, ""
		}
		return testHandler(op, arg, in, out)
	}
	c := startServe(t, ClientOptions{Slots: 1, SlotInput: 4096, SlotOutput: 4096}, h, 2)

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, opBlock, 0, []byte("x"), nil, 4096)
		errc <- err
	}()
	<-entered
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled call: %v, want context.Canceled", err)
	}

	// The only slot is still reserved for the abandoned request.
	short, cancelShort := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := c.Call(short, opEcho, 0, []byte("y"), nil, 1)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call while the only slot is abandoned-in-flight: %v, want DeadlineExceeded", err)
	}

	close(release)
	in := bytes.Repeat([]byte{0x11}, 4096)
	got, err := c.Call(testCtx(t), opEcho, 0, in, nil, 4096)
	if err != nil || !bytes.Equal(got, in) {
		t.Fatalf("call after the late completion: %v (equal %v)", err, bytes.Equal(got, in))
	}
}

func TestCancelWhileWaitingForSlot(t *testing.T) {
	const opBlock = 100
	entered := make(chan struct{})
	release := make(chan struct{})
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		if op == opBlock {
			close(entered)
			<-release
			return 0, 0, ""
		}
		return testHandler(op, arg, in, out)
	}
	c := startServe(t, ClientOptions{Slots: 1, SlotInput: 4096}, h, 1)
	done := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), opBlock, 0, nil, nil, 0)
		done <- err
	}()
	<-entered // the only slot is taken
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := c.Call(ctx, opEcho, 0, []byte("a"), nil, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := c.Call(cctx, opEcho, 0, []byte("a"), nil, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("pre-cancelled ctx: got %v, want Canceled", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("blocked call: %v", err)
	}
}

func TestHandlerErrors(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 16 << 10, SlotOutput: 8192}, testHandler, 2)
	ctx := testCtx(t)
	var re *RemoteError

	_, err := c.Call(ctx, opFail, 42, []byte("level 99 out of range"), nil, 100)
	if !errors.As(err, &re) || re.Code != 42 || re.Message != "level 99 out of range" {
		t.Fatalf("got %v, want RemoteError 42", err)
	}
	if errors.Is(err, ErrClosed) {
		t.Fatal("a handler error must not close the channel")
	}
	if msg := err.Error(); !strings.Contains(msg, "code 42") || !strings.Contains(msg, "level 99 out of range") {
		t.Fatalf("error text %q lacks code or message", msg)
	}
	// The message travels in the slot's output region, so even maxOut 0
	// gets it, bounded by MaxErrorMessage; invalid UTF-8 is replaced.
	long := strings.Repeat("e", 10000)
	_, err = c.Call(ctx, opFail, 7, []byte(long), nil, 0)
	if !errors.As(err, &re) || re.Code != 7 || re.Message != long[:MaxErrorMessage] {
		t.Fatalf("long message: %v", err)
	}
	_, err = c.Call(ctx, opFail, 8, []byte("bad \xff byte"), nil, 0)
	if !errors.As(err, &re) || re.Message != "bad \uFFFD byte" {
		t.Fatalf("invalid utf-8: %q", re.Message)
	}
	// A handler that lies about its output length is caught in the plugin.
	_, err = c.Call(ctx, opBadN, 0, []byte("x"), nil, 10)
	if !errors.As(err, &re) || re.Code != CodeBadHandlerResult {
		t.Fatalf("bad n: %v", err)
	}
	_, err = c.Call(ctx, opFail, int64(CodeReserved+5), []byte("x"), nil, 10)
	if !errors.As(err, &re) || re.Code != CodeBadHandlerResult {
		t.Fatalf("reserved code: %v", err)
	}
	// Still usable.
	got, err := c.Call(ctx, opEcho, 0, []byte("alive"), nil, 5)
	if err != nil || string(got) != "alive" {
		t.Fatalf("after errors: %q, %v", got, err)
	}
}

func TestTooBig(t *testing.T) {
	var calls atomic.Int64
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		calls.Add(1)
		return testHandler(op, arg, in, out)
	}
	c := startServe(t, ClientOptions{Slots: 1, SlotInput: 4096, SlotOutput: 8192}, h, 1)
	ctx := testCtx(t)
	if _, err := c.Call(ctx, opEcho, 0, make([]byte, 4097), nil, 10); !errors.Is(err, ErrTooBig) {
		t.Fatalf("input 4097: %v", err)
	}
	if _, err := c.Call(ctx, opEcho, 0, nil, nil, 8193); !errors.Is(err, ErrTooBig) {
		t.Fatalf("maxOut 8193: %v", err)
	}
	if _, err := c.Call(ctx, opEcho, 0, nil, nil, -1); err == nil || errors.Is(err, ErrTooBig) {
		t.Fatalf("maxOut -1: %v", err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("oversize requests reached the plugin %d times", n)
	}
	if _, err := c.Call(ctx, opEcho, 0, make([]byte, 4096), nil, 8192); err != nil {
		t.Fatalf("exact fit: %v", err)
	}
}

func TestPeerClosesMidCall(t *testing.T) {
	const opBlock = 100
	release := make(chan struct{})
	var entered sync.WaitGroup
	entered.Add(4)
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		if op == opBlock {
			entered.Done()
			<-release
		}
		return copy(out, in), 0, ""
	}
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	sctx, stopServe := context.WithCancel(context.Background())
	serveErr := make(chan error, 1)
	go func() { serveErr <- Serve(sctx, plug, h, 4) }()
	c, err := NewClient(testCtx(t), host, ClientOptions{Slots: 4, SlotInput: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// 4 requests in flight, 4 more callers waiting for a slot.
	errs := make(chan error, 8)
	var callers sync.WaitGroup
	for range 8 {
		callers.Go(func() {
			_, err := c.Call(context.Background(), opBlock, 0, []byte("z"), nil, 1)
			errs <- err
		})
	}
	entered.Wait()
	stopServe() // the plugin end closes its socket; its handlers are still running

	for range 8 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("waiting caller: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("callers still waiting 5s after the peer closed")
		}
	}
	callers.Wait()
	if _, err := c.Call(context.Background(), opEcho, 0, nil, nil, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after peer close: %v", err)
	}
	close(release)
	if err := <-serveErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve: %v, want context.Canceled", err)
	}
}

func TestCloseWakesCallers(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 2)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := c.Call(context.Background(), opSleep, 200, nil, nil, 0)
			errs <- err
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Errorf("caller after Close: %v", err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestZeroAllocsPerCall(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 1)
	in := bytes.Repeat([]byte{7}, 4096)
	dst := make([]byte, 0, 4096)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	// AllocsPerRun counts the whole process, so this covers Serve's side
	// (which runs in this process) as well as the Client's.
	allocs := testing.AllocsPerRun(200, func() {
		dst, err = c.Call(ctx, opEcho, 0, in, dst[:0], len(in))
	})
	if err != nil || !bytes.Equal(dst, in) {
		t.Fatalf("call: %v", err)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per Call, want 0", allocs)
	}
}

func TestHostilePlugin(t *testing.T) {
	bad := map[string]func(p *fakePlugin, slot uint32, r request) error{
		"output longer than asked": func(p *fakePlugin, slot uint32, r request) error {
			p.completeWith(slot, completion{seq: r.seq, n: r.outCap + 1})
			return nil
		},
		"output longer than slot": func(p *fakePlugin, slot uint32, r request) error {
			p.completeWith(slot, completion{seq: r.seq, n: math.MaxUint32})
			return nil
		},
		"error message too long": func(p *fakePlugin, slot uint32, r request) error {
			p.completeWith(slot, completion{seq: r.seq, code: 3, n: MaxErrorMessage + 1})
			return nil
		},
		"sequence from the future": func(p *fakePlugin, slot uint32, r request) error {
			p.completeWith(slot, completion{seq: r.seq + 1})
			return nil
		},
		"sequence from the past": func(p *fakePlugin, slot uint32, r request) error {
			p.completeWith(slot, completion{seq: r.seq - 2})
			return nil
		},
		"reserved bits set": func(p *fakePlugin, slot uint32, r request) error {
			var rec [completionSize]byte
			encodeCompletion(rec[:], completion{seq: r.seq})
			rec[15] = 1
			p.complete(slot, rec)
			return nil
		},
		"message on the socket": func(p *fakePlugin, slot uint32, r request) error {
			_, err := p.conn.Write([]byte{4, 0, 0x57, 0x44})
			return err
		},
	}
	for name, misbehave := range bad {
		t.Run(name, func(t *testing.T) {
			c := withFake(t, ClientOptions{Slots: 2, SlotInput: 4096, SlotOutput: 4096}, func(p *fakePlugin) {
				slot, r, err := p.readRequest()
				if err != nil {
					t.Errorf("fake read request: %v", err)
					return
				}
				if err := misbehave(p, slot, r); err != nil {
					t.Errorf("fake misbehave: %v", err)
				}
				p.hangup()
			})
			ctx := testCtx(t)
			_, err := c.Call(ctx, opEcho, 0, []byte("abc"), nil, 3)
			if !isClosedProtocol(err) {
				t.Fatalf("got %v, want ErrClosed and ErrProtocol", err)
			}
			if _, err2 := c.Call(ctx, opEcho, 0, nil, nil, 0); !isClosedProtocol(err2) {
				t.Fatalf("later call: %v", err2)
			}
		})
	}
}

// TestPluginScribbles: a plugin may write anything anywhere in the arena at
// any time. The host must neither panic nor read outside the mapping; the
// worst it may get is wrong bytes or a protocol error.
func TestPluginScribbles(t *testing.T) {
	c := withFake(t, ClientOptions{Slots: 2, SlotInput: 4096, SlotOutput: 4096}, func(p *fakePlugin) {
		rng := rand.New(rand.NewPCG(1, 2))
		for {
			slot, r, err := p.readRequest()
			if err != nil {
				return
			}
			// Garbage over the whole control area (header, both slots'
			// words) and the output, then a completion that is valid
			// for this request.
			for i := range p.g.ctlSize() {
				p.mem[i] = byte(rng.Uint32())
			}
			for i := range r.outCap {
				p.mem[p.g.outOff(slot)+uint64(i)] = byte(rng.Uint32())
			}
			for i := range p.g.slots {
				p.seen[i] = atomic.LoadUint32(word(p.mem, p.g.ctlOff(i)+slotReqSeq))
			}
			p.completeWith(slot, completion{seq: r.seq, n: r.outCap})
			if r.op == opFail {
				p.hangup()
				return
			}
		}
	})
	ctx := testCtx(t)
	sawClosed := false
	for range 20 {
		out, err := c.Call(ctx, opEcho, 0, []byte("abc"), nil, 3)
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("call: %v", err)
			}
			sawClosed = true
			break
		}
		if len(out) != 3 {
			t.Fatalf("got %d bytes, asked for 3", len(out))
		}
	}
	if !sawClosed {
		// The scribbles never hit a checked word; end the fake cleanly.
		c.Call(ctx, opFail, 0, nil, nil, 0)
	}
}

func TestHandshakeFailures(t *testing.T) {
	opts := ClientOptions{Slots: 1, SlotInput: 4096}
	run := func(t *testing.T, ctx context.Context, plugin func(p *fakePlugin)) error {
		host, plug, err := Pair()
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		defer wg.Wait()
		wg.Go(func() {
			p, err := acceptFake(plug)
			if err != nil {
				t.Errorf("fake accept: %v", err)
				return
			}
			defer p.close()
			plugin(p)
		})
		c, err := NewClient(ctx, host, opts)
		if err == nil {
			c.Close()
			t.Fatal("NewClient succeeded")
		}
		return err
	}
	t.Run("refused", func(t *testing.T) {
		err := run(t, testCtx(t), func(p *fakePlugin) { p.sendAck(ackBadVersion) })
		if !strings.Contains(err.Error(), "unsupported protocol version") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("garbage ack", func(t *testing.T) {
		err := run(t, testCtx(t), func(p *fakePlugin) { p.conn.Write([]byte("hello there, host")) })
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("ack of another version", func(t *testing.T) {
		err := run(t, testCtx(t), func(p *fakePlugin) {
			var b [ackSize]byte
			encodeAck(b[:], ack{version: protocolVersion + 1})
			p.conn.Write(b[:])
		})
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("plugin exits", func(t *testing.T) {
		err := run(t, testCtx(t), func(p *fakePlugin) {})
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("no ack before ctx ends", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := run(t, ctx, func(p *fakePlugin) {
			p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			p.hangup() // returns when the client gives up and closes
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("not seqpacket", func(t *testing.T) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[1])
		_, err = NewClient(testCtx(t), os.NewFile(uintptr(fds[0]), "stream"), opts)
		if err == nil || !strings.Contains(err.Error(), "SOCK_SEQPACKET") {
			t.Fatalf("got %v", err)
		}
	})
}

func TestHostileHostHello(t *testing.T) {
	g := mustGeometry(t, 2, 4096, 4096)
	good := hello{version: protocolVersion, geometry: g, arenaSize: g.size()}
	sealed := func(t *testing.T, size int64, seals int) int {
		fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Ftruncate(fd, size); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		return fd
	}
	// A version-4 hello carries the memfd and the host-wake eventfd.
	efd := func(t *testing.T) int {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	v3 := hello{version: 3, geometry: g, arenaSize: g.size()}
	cases := []struct {
		name   string
		h      hello
		fds    func(t *testing.T) []int
		status uint32 // ack the plugin should send before giving up; ^0 for none
		proto  bool   // Serve's error must wrap ErrProtocol
	}{
		{"no descriptor", good, func(t *testing.T) []int { return nil }, ackBadArena, true},
		{"memfd only", good, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals)}
		}, ackBadArena, true},
		{"memfd instead of eventfd", good, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), sealed(t, int64(g.size()), arenaSeals)}
		}, ackBadArena, true},
		{"three descriptors", good, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), efd(t), efd(t)}
		}, ackBadArena, true},
		{"version 3 with an eventfd", v3, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), efd(t)}
		}, ackBadArena, true},
		{"wrong version", hello{version: 9, geometry: g, arenaSize: g.size()}, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals)}
		}, ackBadVersion, false},
		{"size mismatch", hello{version: protocolVersion, geometry: g, arenaSize: g.size() + 1}, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), efd(t)}
		}, ackBadArena, true},
		{"zero slots", hello{version: protocolVersion, arenaSize: 0, geometry: geometry{slotIn: 4096, slotOut: 4096}}, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), efd(t)}
		}, ackBadArena, true},
		{"huge arena", hello{version: protocolVersion, geometry: geometry{slots: maxSlots, slotIn: maxRegion, slotOut: maxRegion}, arenaSize: math.MaxUint64}, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), arenaSeals), efd(t)}
		}, ackBadArena, true},
		{"memfd smaller than announced", good, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size())-4096, arenaSeals), efd(t)}
		}, ackBadArena, false},
		{"memfd not sealed", good, func(t *testing.T) []int {
			return []int{sealed(t, int64(g.size()), 0), efd(t)}
		}, ackBadArena, false},
		{"pipe instead of memfd", good, func(t *testing.T) []int {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(p[1])
			return []int{p[0], efd(t)}
		}, ackBadArena, false},
		{"pipe instead of eventfd", good, func(t *testing.T) []int {
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			unix.Close(p[0])
			return []int{sealed(t, int64(g.size()), arenaSeals), p[1]}
		}, ackBadArena, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls int64
			var mu sync.Mutex
			r := serveRaw(t, &calls, &mu)
			fds := tc.fds(t)
			err := r.hello(tc.h, fds...)
			closeFDs(fds)
			if err != nil {
				t.Fatal(err)
			}
			a, err := r.readAck()
			if err != nil || a.status != tc.status {
				t.Fatalf("ack %+v, %v; want status %d", a, err, tc.status)
			}
			serr := r.serveErr(t)
			if serr == nil || (tc.proto && !errors.Is(serr, ErrProtocol)) {
				t.Fatalf("Serve: %v (want protocol error: %v)", serr, tc.proto)
			}
		})
	}
	t.Run("garbage hello", func(t *testing.T) {
		var calls int64
		var mu sync.Mutex
		r := serveRaw(t, &calls, &mu)
		if _, err := r.conn.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve: %v", err)
		}
	})
	t.Run("too many descriptors", func(t *testing.T) {
		var calls int64
		var mu sync.Mutex
		r := serveRaw(t, &calls, &mu)
		var fds []int
		for range maxRecvFDs + 4 {
			fds = append(fds, sealed(t, 4096, 0))
		}
		err := r.hello(good, fds...)
		closeFDs(fds)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve: %v", err)
		}
	})
}

func TestHostileHostRequests(t *testing.T) {
	g := mustGeometry(t, 2, 4096, 8192)
	ok := request{seq: 1, op: opEcho, inLen: 10, outCap: 10}
	cases := map[string]func(r request) request{
		"input past slot":  func(r request) request { r.inLen = 4097; return r },
		"input huge":       func(r request) request { r.inLen = math.MaxUint32; return r },
		"output past slot": func(r request) request { r.outCap = 8193; return r },
		"output huge":      func(r request) request { r.outCap = math.MaxUint32; return r },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			var calls int64
			var mu sync.Mutex
			r := serveRaw(t, &calls, &mu)
			mem := r.handshake(t, g)
			// One good request first: the channel works until the bad one.
			r.post(mem, g, 1, ok)
			if c := r.awaitDone(t, mem, g, 1, 1); c.code != 0 || c.n != 10 {
				t.Fatalf("good request: %+v", c)
			}
			bad := mutate(ok)
			bad.seq = 2
			r.post(mem, g, 1, bad)
			if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Serve: %v, want ErrProtocol", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if calls != 1 {
				t.Fatalf("handler ran %d times, want only for the good request", calls)
			}
		})
	}
	t.Run("reserved field set", func(t *testing.T) {
		var calls int64
		var mu sync.Mutex
		r := serveRaw(t, &calls, &mu)
		mem := r.handshake(t, g)
		var rec [requestSize]byte
		encodeRequest(rec[:], ok)
		rec[24] = 1
		r.postRaw(mem, g, 0, rec)
		if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve: %v, want ErrProtocol", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if calls != 0 {
			t.Fatalf("handler ran %d times", calls)
		}
	})
	t.Run("message after hello", func(t *testing.T) {
		var calls int64
		var mu sync.Mutex
		r := serveRaw(t, &calls, &mu)
		r.handshake(t, g)
		if _, err := r.conn.Write(make([]byte, 48)); err != nil {
			t.Fatal(err)
		}
		if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
			t.Fatalf("Serve: %v", err)
		}
	})
}

func TestServeArguments(t *testing.T) {
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if err := Serve(context.Background(), plug, nil, 1); err == nil {
		t.Fatal("nil handler accepted")
	}
	if err := Serve(context.Background(), nil, testHandler, 1); err == nil {
		t.Fatal("nil conn accepted")
	}
	if _, err := NewClient(context.Background(), nil, ClientOptions{}); err == nil {
		t.Fatal("nil conn accepted")
	}
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := Serve(context.Background(), f, testHandler, 1); err == nil {
		t.Fatal("a regular file accepted as the socket")
	}
}

func TestServeStopsOnContext(t *testing.T) {
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, plug, testHandler, 2) }()
	cancel() // before any hello: Serve must not wait forever for one
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve ignored its context")
	}
}

// childCmd starts this test binary as a plugin process serving shm on the
// plugin end of a fresh pair, as the real host will do with a plugin binary.
func childCmd(t *testing.T) (*exec.Cmd, *os.File, *strings.Builder) {
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.ExtraFiles = []*os.File{plug}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	plug.Close() // the child has its copy
	return cmd, host, &stderr
}

func TestChildProcess(t *testing.T) {
	cmd, host, stderr := childCmd(t)
	c, err := NewClient(testCtx(t), host, ClientOptions{Slots: 4, SlotInput: 256 << 10})
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("NewClient: %v; child stderr: %s", err, stderr)
	}
	ctx := testCtx(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for _, n := range []int{0, 1, 4096, 65536 + 3, 256 << 10} {
				in := randBytes(rand.New(rand.NewPCG(uint64(g), 1)), n)
				got, err := c.Call(ctx, opXor, int64(g), in, nil, n)
				if err != nil {
					t.Errorf("xor %d bytes: %v", n, err)
					return
				}
				for i := range in {
					if got[i] != in[i]^byte(g) {
						t.Errorf("xor %d bytes: byte %d wrong", n, i)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	_, err = c.Call(ctx, opFail, 5, []byte("across"), nil, 0)
	var re *RemoteError
	if !errors.As(err, &re) || re.Code != 5 || re.Message != "across" {
		t.Fatalf("remote error across processes: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// Host close is a clean shutdown for the plugin: Serve returns nil and
	// the child exits 0.
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; stderr: %s", err, stderr)
	}
}

func TestChildProcessCrash(t *testing.T) {
	cmd, host, stderr := childCmd(t)
	c, err := NewClient(testCtx(t), host, ClientOptions{Slots: 8, SlotInput: 4096})
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("NewClient: %v; child stderr: %s", err, stderr)
	}
	defer c.Close()
	errs := make(chan error, 6)
	for range 6 {
		go func() {
			_, err := c.Call(context.Background(), opSleep, 60_000, []byte("slow"), nil, 4)
			errs <- err
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if c.Err() != nil {
		t.Fatalf("Err before the crash: %v", c.Err())
	}
	// The plugin dies while six requests are in flight.
	if _, err := c.Call(context.Background(), opExit, 3, nil, nil, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("the crashing call: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the plugin died")
	}
	if err := c.Err(); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "crashed") {
		t.Fatalf("Err after the crash: %v", err)
	}
	for range 6 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) || errors.Is(err, ErrProtocol) {
				t.Errorf("in-flight call: %v, want ErrClosed (no protocol error)", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("in-flight calls not released 5s after the plugin died")
		}
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("child exit: %v", err)
	}
}

func TestPairIsSeqpacketCloexec(t *testing.T) {
	host, plug, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	defer plug.Close()
	for _, f := range []*os.File{host, plug} {
		typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_SEQPACKET {
			t.Fatalf("%s: type %d, %v", f.Name(), typ, err)
		}
		flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Fatalf("%s: not close-on-exec (%#x, %v)", f.Name(), flags, err)
		}
	}
}

func TestArenaIsSealed(t *testing.T) {
	g := mustGeometry(t, 1, 4096, 4096)
	fd, mem, err := createArena(g)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, 4096); err == nil {
		t.Fatal("arena could be shrunk: a plugin could SIGBUS the host")
	}
	if len(mem) != int(g.size()) {
		t.Fatalf("mapping %d bytes, want %d", len(mem), g.size())
	}
}

func TestHandlerSlicesClipped(t *testing.T) {
	// An append in a handler must not run past its region into the next
	// one (input into output, output into the next slot).
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		if cap(in) != len(in) || cap(out) != len(out) {
			return 0, 1, fmt.Sprintf("in %d/%d out %d/%d", len(in), cap(in), len(out), cap(out))
		}
		return copy(out, in), 0, ""
	}
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 8192, SlotOutput: 8192}, h, 1)
	for _, n := range []int{0, 10, 8192} {
		got, err := c.Call(testCtx(t), 0, 0, make([]byte, n), nil, n/2)
		if err != nil || len(got) != n/2 {
			t.Fatalf("n=%d: %d bytes, %v", n, len(got), err)
		}
	}
}

// TestHostWake: Serve wakes a parked host the way the host asked in its
// parked word: a version-4 host waiting for the eventfd (parkedEventfd)
// through the eventfd and never its futex word, a host asleep on the futex
// word (parkedFutex, the only kind before version 4) by bumping the word
// and never the eventfd; a host that is not parked gets no wake-up at all.
func TestHostWake(t *testing.T) {
	g := mustGeometry(t, 2, 4096, 4096)
	for _, v := range []uint32{3, eventfdVersion} {
		t.Run(fmt.Sprintf("version %d", v), func(t *testing.T) {
			var calls int64
			var mu sync.Mutex
			r := serveRaw(t, &calls, &mu)
			mem := r.handshakeVersion(t, g, v)
			wakeWord := word(mem, g.ctlOff(0)+slotWake)
			counter := func() uint64 {
				if v < eventfdVersion {
					return 0
				}
				var b [8]byte
				n, err := unix.Read(r.wake, b[:])
				if errors.Is(err, unix.EAGAIN) {
					return 0
				}
				if err != nil || n != 8 {
					t.Fatalf("read host-wake eventfd: %d, %v", n, err)
				}
				return le.Uint64(b[:])
			}
			var seq uint32
			// run posts an echo with the parked word set to parked and
			// returns the futex word's increase and the eventfd's count.
			run := func(parked uint32, wantEventfd bool) (uint32, uint64) {
				t.Helper()
				seq++
				w0 := atomic.LoadUint32(wakeWord)
				atomic.StoreUint32(word(mem, g.ctlOff(0)+slotParked), parked)
				copy(mem[g.inOff(0):], "hello")
				r.post(mem, g, 0, request{seq: seq, op: opEcho, inLen: 5, outCap: 5})
				r.awaitDone(t, mem, g, 0, seq)
				n := counter()
				for deadline := time.Now().Add(10 * time.Second); wantEventfd && n == 0 && time.Now().Before(deadline); n = counter() {
					time.Sleep(time.Millisecond)
				}
				return atomic.LoadUint32(wakeWord) - w0, n
			}
			if w, n := run(0, false); w != 0 || n != 0 {
				t.Fatalf("unparked host woken: futex word +%d, eventfd %d", w, n)
			}
			if w, n := run(parkedFutex, false); w != 1 || n != 0 {
				t.Fatalf("host asleep on the futex word: futex word +%d, eventfd %d; want +1 and 0", w, n)
			}
			if v >= eventfdVersion {
				if w, n := run(parkedEventfd, true); w != 0 || n != 1 {
					t.Fatalf("host waiting for the eventfd: futex word +%d, eventfd %d; want +0 and 1", w, n)
				}
			}
			r.conn.Close()
			if err := r.serveErr(t); err != nil {
				t.Fatalf("Serve: %v", err)
			}
		})
	}
}

// TestLostWakeUpCostsARecheck: a completion published with no wake-up at
// all (neither the futex word nor the host-wake eventfd) is found by the
// parked caller's own recheck, within about recheckEvery, not at the
// call's timeout; MissedWakes counts it.
func TestLostWakeUpCostsARecheck(t *testing.T) {
	const hold = 20 * time.Millisecond // past the spin and the short futex phase: the caller parks
	c := withFake(t, ClientOptions{Slots: 1, SlotInput: 4096, SlotOutput: 4096}, func(p *fakePlugin) {
		slot, r, err := p.readRequest()
		if err != nil {
			return
		}
		time.Sleep(hold)
		ctl := p.g.ctlOff(slot)
		atomic.StoreUint32(word(p.mem, ctl+slotDoneSeq), r.seq) // code 0, n 0: an empty result
		p.hangup()
	})
	start := time.Now()
	if _, err := c.CallTimeout(context.Background(), 30*time.Second, opEcho, 0, []byte("x"), nil, 0); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took > 10*recheckEvery {
		t.Fatalf("the call took %v: the lost wake-up was not caught by a recheck (every %v)", took, recheckEvery)
	}
	if n := c.MissedWakes(); n != 1 {
		t.Fatalf("MissedWakes %d, want 1", n)
	}
}
