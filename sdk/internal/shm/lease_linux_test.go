package shm

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// inArena reports whether b lies inside c's mapping.
func inArena(c *Client, b []byte) bool {
	if len(b) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(&c.arena[0]))
	p := uintptr(unsafe.Pointer(&b[0]))
	return p >= start && p+uintptr(len(b)) <= start+uintptr(len(c.arena))
}

// mapped reports whether the page holding p is mapped in this process
// (madvise fails with ENOMEM on an unmapped address, and MADV_NORMAL
// changes nothing on a mapped one).
func mapped(p unsafe.Pointer) bool {
	page := unsafe.Add(p, -int(uintptr(p)&(pageSize-1)))
	err := unix.Madvise(unsafe.Slice((*byte)(page), pageSize), unix.MADV_NORMAL)
	return !errors.Is(err, unix.ENOMEM)
}

func TestLeaseRoundTrip(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 4, SlotInput: 64 << 10, SlotOutput: 64 << 10}, testHandler, 2)
	ctx := testCtx(t)
	l, ok := c.TryLease()
	if !ok {
		t.Fatal("TryLease on an idle channel failed")
	}
	in := l.Input()
	if len(in) != 64<<10 || cap(in) != 64<<10 || !inArena(c, in) {
		t.Fatalf("Input: len %d cap %d, in arena %v", len(in), cap(in), inArena(c, in))
	}
	r := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{0, 1, 4095, 4096, 64 << 10} {
		want := randBytes(r, n)
		copy(in, want)
		out, err := l.Call(ctx, opXor, 0x5A, n, n)
		if err != nil {
			t.Fatalf("xor %d: %v", n, err)
		}
		if len(out) != n || cap(out) != n || (n > 0 && !inArena(c, out)) {
			t.Fatalf("xor %d: output len %d cap %d, in arena %v", n, len(out), cap(out), inArena(c, out))
		}
		for i := range want {
			if out[i] != want[i]^0x5A {
				t.Fatalf("xor %d: byte %d is %#x, want %#x", n, i, out[i], want[i]^0x5A)
			}
		}
	}
	// The lease keeps its slot: the input region is the same memory.
	if again := l.Input(); &again[0] != &in[0] {
		t.Fatal("Input moved while leased")
	}
	// A handler error is reported and the lease stays usable.
	copy(in, "bad level")
	var re *RemoteError
	if _, err := l.Call(ctx, opFail, 9, len("bad level"), 0); !errors.As(err, &re) || re.Code != 9 || re.Message != "bad level" {
		t.Fatalf("remote error through a lease: %v", err)
	}
	if _, err := l.Call(ctx, opEcho, 0, 10, 10); err != nil {
		t.Fatalf("call after a remote error: %v", err)
	}
	// Limits are checked before anything is posted.
	for _, bad := range [][2]int{{-1, 0}, {64<<10 + 1, 0}, {0, -1}, {0, 64<<10 + 1}} {
		if _, err := l.Call(ctx, opEcho, 0, bad[0], bad[1]); err == nil {
			t.Fatalf("in %d out %d accepted", bad[0], bad[1])
		}
	}

	l.Release()
	if l.Input() != nil {
		t.Fatal("Input after Release is not nil")
	}
	if _, err := l.Call(ctx, opEcho, 0, 1, 1); !errors.Is(err, ErrLeaseReleased) {
		t.Fatalf("Call after Release: %v", err)
	}
	l.Release() // idempotent
	var zero Lease
	if zero.Input() != nil {
		t.Fatal("zero Lease has an Input")
	}
	if _, err := zero.Call(ctx, opEcho, 0, 0, 0); !errors.Is(err, ErrLeaseReleased) {
		t.Fatalf("zero Lease Call: %v", err)
	}
	zero.Release()
}

// TestLeaseStaleHandle: a released handle must not reach the slot's next
// holder, even though slots are reused most recently freed first.
func TestLeaseStaleHandle(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 1)
	ctx := testCtx(t)
	a, _ := c.TryLease()
	a.Release()
	b, ok := c.TryLease()
	if !ok {
		t.Fatal("second lease failed")
	}
	defer b.Release()
	if b.idx != a.idx {
		t.Fatalf("slot %d, then %d: the free list is not most recently used first", a.idx, b.idx)
	}
	copy(b.Input(), "mine")
	if a.Input() != nil {
		t.Fatal("a stale handle sees the new holder's input")
	}
	if _, err := a.Call(ctx, opEcho, 0, 4, 4); !errors.Is(err, ErrLeaseReleased) {
		t.Fatalf("stale Call: %v", err)
	}
	a.Release() // must not release b's lease
	out, err := b.Call(ctx, opEcho, 0, 4, 4)
	if err != nil || string(out) != "mine" {
		t.Fatalf("holder after a stale Release: %q, %v", out, err)
	}
	if _, ok := c.TryLease(); ok {
		t.Fatal("a stale Release freed the holder's slot: a second lease fit a 1-lease budget")
	}
}

func TestLeaseBudget(t *testing.T) {
	for _, tc := range []struct {
		slots, leases, want int
	}{
		{1, 0, 0}, {2, 0, 1}, {8, 0, 4}, {4, 3, 3}, {4, 10, 3},
	} {
		c := startServe(t, ClientOptions{Slots: tc.slots, SlotInput: 4096, Leases: tc.leases}, testHandler, 1)
		var held []Lease
		for {
			l, ok := c.TryLease()
			if !ok {
				break
			}
			held = append(held, l)
		}
		if len(held) != tc.want {
			t.Fatalf("slots %d, Leases %d: %d leases, want %d", tc.slots, tc.leases, len(held), tc.want)
		}
		// The slots outside the budget still serve Calls.
		if out, err := c.Call(testCtx(t), opEcho, 0, []byte("call"), nil, 4); err != nil || string(out) != "call" {
			t.Fatalf("slots %d: Call with every lease taken: %q, %v", tc.slots, out, err)
		}
		for _, l := range held {
			l.Release()
		}
		if tc.want > 0 {
			l, ok := c.TryLease()
			if !ok {
				t.Fatalf("slots %d: no lease after releasing all", tc.slots)
			}
			l.Release()
		}
	}
}

// TestLeaseAbandonedRequest: a lease whose call timed out keeps its slot
// away from everyone (itself included) until the plugin completes, and a
// late completion writes only into that slot.
func TestLeaseAbandonedRequest(t *testing.T) {
	const opBlock = 100
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	h := func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
		if op == opBlock {
			entered <- struct{}{}
			<-release
			for i := range out {
				out[i] = 0xAB
			}
			return len(out), 0, ""
		}
		return testHandler(op, arg, in, out)
	}
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096, SlotOutput: 4096, Leases: 1}, h, 2)
	ctx := testCtx(t)
	l, _ := c.TryLease()
	errc := make(chan error, 1)
	go func() {
		_, err := l.CallTimeout(ctx, 20*time.Millisecond, opBlock, 0, 1, 4096)
		errc <- err
	}()
	<-entered
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timed-out lease call: %v", err)
	}
	if _, err := l.Call(ctx, opEcho, 0, 1, 1); err == nil || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("call on a lease with an abandoned request: %v", err)
	}
	l.Release()
	// The lease budget is free again, but the slot is not: a new lease
	// gets the other slot, and a Call waiting for a slot has none.
	m, ok := c.TryLease()
	if !ok || m.idx == l.idx {
		t.Fatalf("new lease: ok %v, slot %d (abandoned slot %d)", ok, m.idx, l.idx)
	}
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	_, err := c.Call(short, opEcho, 0, []byte("y"), nil, 1)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call while both slots are taken: %v", err)
	}
	copy(m.Input(), bytes.Repeat([]byte{0x11}, 4096))
	close(release)
	// The late completion landed in the abandoned slot, not in m's.
	out, err := m.Call(ctx, opEcho, 0, 4096, 4096)
	if err != nil || !bytes.Equal(out, bytes.Repeat([]byte{0x11}, 4096)) {
		t.Fatalf("lease beside the late completion: %v", err)
	}
	m.Release()
	if got, err := c.Call(ctx, opEcho, 0, []byte("z"), nil, 1); err != nil || string(got) != "z" {
		t.Fatalf("call after the late completion: %q, %v", got, err)
	}
}

// TestLeaseOutlivesClose: Close must not unmap memory a holder may still
// be writing into; the last Release unmaps it.
func TestLeaseOutlivesClose(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 4, SlotInput: 4096}, testHandler, 1)
	l1, _ := c.TryLease()
	l2, _ := c.TryLease()
	in := l1.Input()
	p := unsafe.Pointer(&in[0])
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	copy(in, "still mapped") // must not fault
	if _, err := l1.Call(context.Background(), opEcho, 0, 4, 4); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after Close: %v", err)
	}
	if _, ok := c.TryLease(); ok {
		t.Fatal("TryLease after Close succeeded")
	}
	l1.Release()
	if !mapped(p) {
		t.Fatal("unmapped while a lease was still out")
	}
	l2.Release()
	if mapped(p) {
		t.Fatal("the last Release after Close did not unmap the arena")
	}
}

// TestLeaseCloseWithoutLeases: with no lease out, Close unmaps at once.
func TestLeaseCloseWithoutLeases(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 1)
	l, _ := c.TryLease()
	p := unsafe.Pointer(&l.Input()[0])
	l.Release()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if mapped(p) {
		t.Fatal("Close left the arena mapped")
	}
}

// TestLeaseHostilePlugin: a plugin that reports more output than the
// lease asked for tears the channel down; the holder's memory stays valid
// and its Release is clean.
func TestLeaseHostilePlugin(t *testing.T) {
	c := withFake(t, ClientOptions{Slots: 2, SlotInput: 4096, SlotOutput: 4096}, func(p *fakePlugin) {
		slot, r, err := p.readRequest()
		if err != nil {
			t.Errorf("fake read request: %v", err)
			return
		}
		p.completeWith(slot, completion{seq: r.seq, n: r.outCap + 1})
		p.hangup()
	})
	l, _ := c.TryLease()
	defer l.Release()
	copy(l.Input(), "abc")
	out, err := l.Call(testCtx(t), opEcho, 0, 3, 3)
	if !isClosedProtocol(err) || out != nil {
		t.Fatalf("got %q, %v; want no output, ErrClosed and ErrProtocol", out, err)
	}
	copy(l.Input(), "still ours")
}

// TestLeaseScribblingPlugin: a plugin writes garbage over the control area,
// over the input of another leased slot (which the host is filling) and
// over the output, then completes validly. The host neither panics nor
// reads or writes outside its slot views; the worst is wrong bytes or a
// protocol error.
func TestLeaseScribblingPlugin(t *testing.T) {
	c := withFake(t, ClientOptions{Slots: 4, SlotInput: 4096, SlotOutput: 4096}, func(p *fakePlugin) {
		rng := rand.New(rand.NewPCG(5, 6))
		for {
			slot, r, err := p.readRequest()
			if err != nil {
				return
			}
			for i := range p.g.ctlSize() {
				p.mem[i] = byte(rng.Uint32())
			}
			// Every slot's regions, the host's inputs included.
			for i := p.g.ctlSize(); i < p.g.size(); i += 61 {
				p.mem[i] = byte(rng.Uint32())
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
	other, _ := c.TryLease() // filled by the host while the plugin scribbles
	defer other.Release()
	l, _ := c.TryLease()
	defer l.Release()
	closed := false
	for i := range 20 {
		copy(other.Input(), bytes.Repeat([]byte{byte(i)}, 4096))
		copy(l.Input(), "abc")
		out, err := l.Call(ctx, opEcho, 0, 3, 3)
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("call: %v", err)
			}
			closed = true
			break
		}
		if len(out) != 3 || !inArena(c, out) {
			t.Fatalf("got %d bytes (in arena %v), asked for 3", len(out), inArena(c, out))
		}
	}
	if !closed {
		c.Call(ctx, opFail, 0, nil, nil, 0)
	}
}

// TestLeaseCrashMidLease: the plugin process dies while a lease holds a
// slot. Calls fail with ErrClosed, the holder can still write its input,
// and Close then Release unmap cleanly.
func TestLeaseCrashMidLease(t *testing.T) {
	cmd, host, stderr := childCmd(t)
	c, err := NewClient(testCtx(t), host, ClientOptions{Slots: 4, SlotInput: 4096})
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("NewClient: %v; child stderr: %s", err, stderr)
	}
	ctx := testCtx(t)
	l, _ := c.TryLease()
	copy(l.Input(), "hello")
	if out, err := l.Call(ctx, opEcho, 0, 5, 5); err != nil || string(out) != "hello" {
		t.Fatalf("echo across processes: %q, %v", out, err)
	}
	if _, err := l.CallTimeout(ctx, 10*time.Second, opExit, 3, 0, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("crashing call: %v", err)
	}
	if _, err := l.Call(ctx, opEcho, 0, 5, 5); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "crashed") {
		t.Fatalf("call after the crash: %v", err)
	}
	p := unsafe.Pointer(&l.Input()[0])
	copy(l.Input(), "after the crash")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	l.Release()
	if mapped(p) {
		t.Fatal("arena still mapped after Close and the last Release")
	}
	cmd.Wait()
}

// TestLeaseConcurrent mixes leases and plain calls from many goroutines on
// few slots: every output must be the caller's own (run it with -race).
func TestLeaseConcurrent(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 4, SlotInput: 16 << 10}, testHandler, 3)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	var leased atomic.Int64
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 17))
			var dst []byte
			for i := range 200 {
				n := r.IntN(16<<10 + 1)
				arg := int64(g*1000 + i)
				want := randBytes(r, n)
				var out []byte
				var err error
				l, ok := c.TryLease()
				if ok {
					leased.Add(1)
					copy(l.Input(), want)
					out, err = l.Call(ctx, opXor, arg, n, n)
				} else {
					dst, err = c.Call(ctx, opXor, arg, want, dst[:0], n)
					out = dst
				}
				if err == nil {
					for j := range want {
						if out[j] != want[j]^byte(arg) {
							err = errors.New("another request's bytes")
							break
						}
					}
				}
				l.Release() // the zero Lease when not leased: a no-op
				if err != nil {
					t.Errorf("caller %d call %d (leased %v): %v", g, i, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if leased.Load() == 0 {
		t.Fatal("no call went through a lease")
	}
}

func TestLeaseZeroAllocs(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 4096}, testHandler, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var err error
	var out []byte
	allocs := testing.AllocsPerRun(200, func() {
		l, ok := c.TryLease()
		if !ok {
			err = errors.New("no lease")
			return
		}
		copy(l.Input(), "page")
		out, err = l.Call(ctx, opEcho, 0, 4, 4)
		if string(out) != "page" {
			err = errors.New("wrong output")
		}
		l.Release()
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per lease, call and release; want 0", allocs)
	}
}
