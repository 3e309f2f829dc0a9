package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// batchItem is one entry a test puts in a batch.
type batchItem struct {
	op     uint32
	arg    int64
	in     []byte
	outCap uint32
}

// layBatch copies the items' inputs into the lease's input region back to
// back from BatchDataOffset, gives each its output room back to back from
// BatchDataOffset, and returns the entries, the way a batch caller does.
func layBatch(t testing.TB, l Lease, items []batchItem) []BatchEntry {
	t.Helper()
	in := l.Input()
	inOff, outOff := uint32(BatchDataOffset), uint32(BatchDataOffset)
	entries := make([]BatchEntry, len(items))
	for i, it := range items {
		if copy(in[inOff:], it.in) != len(it.in) {
			t.Fatalf("item %d does not fit the slot", i)
		}
		entries[i] = BatchEntry{Op: it.op, Arg: it.arg, InOff: inOff, InLen: uint32(len(it.in)), OutOff: outOff, OutCap: it.outCap}
		inOff += uint32(len(it.in))
		outOff += it.outCap
	}
	return entries
}

// TestBatchRoundTrip runs batches of echo and XOR entries of many sizes,
// with failing entries among them, and checks every output byte and error.
func TestBatchRoundTrip(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 4, SlotInput: 1 << 20, SlotOutput: 1 << 20}, testHandler, 2)
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 20 {
		l, ok := c.TryLease()
		if !ok {
			t.Fatal("no lease")
		}
		n := 1 + r.IntN(MaxBatch)
		items := make([]batchItem, n)
		for i := range items {
			size := r.IntN(12 << 10)
			switch i % 5 {
			case 0, 1, 2:
				items[i] = batchItem{op: opEcho, in: randBytes(r, size), outCap: uint32(size)}
			case 3:
				items[i] = batchItem{op: opXor, arg: int64(i), in: randBytes(r, size), outCap: uint32(size)}
			case 4:
				// A failure among good entries: only its own result says so.
				items[i] = batchItem{op: opFail, arg: int64(100 + i), in: fmt.Appendf(nil, "entry %d refused", i), outCap: 64}
			}
		}
		entries := layBatch(t, l, items)
		results := make([]BatchResult, n)
		if err := l.CallBatch(testCtx(t), entries, results); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i, it := range items {
			out, err := l.BatchOutput(entries[i], results[i])
			switch it.op {
			case opEcho:
				if err != nil || !bytes.Equal(out, it.in) {
					t.Fatalf("round %d entry %d echo: %v (equal %v)", round, i, err, bytes.Equal(out, it.in))
				}
			case opXor:
				want := make([]byte, len(it.in))
				for k, b := range it.in {
					want[k] = b ^ byte(it.arg)
				}
				if err != nil || !bytes.Equal(out, want) {
					t.Fatalf("round %d entry %d xor: %v", round, i, err)
				}
			case opFail:
				var re *RemoteError
				if !errors.As(err, &re) || re.Code != uint32(it.arg) || re.Message != string(it.in) || out != nil {
					t.Fatalf("round %d entry %d: %q, %v; want code %d %q", round, i, out, err, it.arg, it.in)
				}
			}
		}
		l.Release()
	}
	// The channel is fine after failed entries: a plain call still works.
	if out, err := c.Call(testCtx(t), opEcho, 0, []byte("after"), nil, 5); err != nil || string(out) != "after" {
		t.Fatalf("call after batches: %q, %v", out, err)
	}
}

// TestBatchHandlerMisbehaves: a handler that claims more output than its
// entry's room gets CodeBadHandlerResult for that entry only, and an error
// message longer than the entry's room is truncated to it.
func TestBatchHandlerMisbehaves(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 64 << 10, SlotOutput: 64 << 10}, testHandler, 1)
	l, _ := c.TryLease()
	defer l.Release()
	long := bytes.Repeat([]byte("x"), 100)
	items := []batchItem{
		{op: opEcho, in: []byte("one"), outCap: 3},
		{op: opBadN, in: []byte("two"), outCap: 3},
		{op: opFail, arg: 7, in: long, outCap: 10},
		{op: opFail, arg: 8, in: long, outCap: 0},
		{op: opEcho, in: []byte("five"), outCap: 4},
	}
	entries := layBatch(t, l, items)
	results := make([]BatchResult, len(entries))
	if err := l.CallBatch(testCtx(t), entries, results); err != nil {
		t.Fatal(err)
	}
	var re *RemoteError
	if out, err := l.BatchOutput(entries[0], results[0]); err != nil || string(out) != "one" {
		t.Fatalf("entry 0: %q, %v", out, err)
	}
	if _, err := l.BatchOutput(entries[1], results[1]); !errors.As(err, &re) || re.Code != CodeBadHandlerResult {
		t.Fatalf("entry 1 (bad n): %v, want CodeBadHandlerResult", err)
	}
	if _, err := l.BatchOutput(entries[2], results[2]); !errors.As(err, &re) || re.Code != 7 || re.Message != string(long[:10]) {
		t.Fatalf("entry 2: %v, want code 7 with the message cut to 10 bytes", err)
	}
	if _, err := l.BatchOutput(entries[3], results[3]); !errors.As(err, &re) || re.Code != 8 || re.Message != "" {
		t.Fatalf("entry 3: %v, want code 8 with no room for a message", err)
	}
	if out, err := l.BatchOutput(entries[4], results[4]); err != nil || string(out) != "five" {
		t.Fatalf("entry 4: %q, %v", out, err)
	}
}

// TestBatchArguments: malformed batches are refused on the host before
// anything is posted, and the channel stays usable.
func TestBatchArguments(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 8192, SlotOutput: 8192}, testHandler, 1)
	l, _ := c.TryLease()
	good := BatchEntry{Op: opEcho, InOff: BatchDataOffset, InLen: 4, OutOff: BatchDataOffset, OutCap: 4}
	res := make([]BatchResult, MaxBatch+1)
	cases := map[string][]BatchEntry{
		"no entries":        {},
		"too many":          make([]BatchEntry, MaxBatch+1),
		"input in table":    {{Op: opEcho, InOff: 100, InLen: 4, OutOff: BatchDataOffset, OutCap: 4}},
		"output in table":   {{Op: opEcho, InOff: BatchDataOffset, InLen: 4, OutOff: 0, OutCap: 4}},
		"input past slot":   {{Op: opEcho, InOff: 8190, InLen: 4, OutOff: BatchDataOffset, OutCap: 4}},
		"output past slot":  {{Op: opEcho, InOff: BatchDataOffset, InLen: 4, OutOff: BatchDataOffset, OutCap: 4097}},
		"offset wraps":      {{Op: opEcho, InOff: math.MaxUint32, InLen: 2, OutOff: BatchDataOffset, OutCap: 4}},
		"nested batch":      {{Op: OpBatch, InOff: BatchDataOffset, InLen: 4, OutOff: BatchDataOffset, OutCap: 4}},
		"reserved op later": {good, {Op: OpReserved, InOff: BatchDataOffset, OutOff: BatchDataOffset}},
	}
	for name, entries := range cases {
		if err := l.CallBatch(testCtx(t), entries, res); err == nil || errors.Is(err, ErrClosed) {
			t.Errorf("%s: %v, want a local refusal", name, err)
		}
	}
	if err := l.CallBatch(testCtx(t), []BatchEntry{good, good}, res[:1]); err == nil {
		t.Error("fewer results than entries accepted")
	}
	if _, err := l.Call(testCtx(t), OpBatch, 1, 0, 0); err == nil {
		t.Error("Lease.Call with OpBatch accepted")
	}
	if _, err := c.Call(testCtx(t), OpBatch, 1, nil, nil, 0); err == nil {
		t.Error("Client.Call with OpBatch accepted")
	}
	copy(l.Input()[BatchDataOffset:], "ping")
	if err := l.CallBatch(testCtx(t), []BatchEntry{good}, res); err != nil {
		t.Fatalf("good batch after refusals: %v", err)
	}
	if out, err := l.BatchOutput(good, res[0]); err != nil || string(out) != "ping" {
		t.Fatalf("good batch: %q, %v", out, err)
	}
	l.Release()
	if err := l.CallBatch(testCtx(t), []BatchEntry{good}, res); !errors.Is(err, ErrLeaseReleased) {
		t.Fatalf("batch on a released lease: %v", err)
	}
	if _, err := l.BatchOutput(good, res[0]); !errors.Is(err, ErrLeaseReleased) {
		t.Fatalf("output of a released lease: %v", err)
	}
}

// TestBatchHostilePlugin: completions a real Serve never writes tear the
// channel down with ErrProtocol instead of handing the caller a slice
// outside the entry.
func TestBatchHostilePlugin(t *testing.T) {
	cases := map[string]func(p *fakePlugin, slot uint32, r request){
		"whole batch failed": func(p *fakePlugin, slot uint32, r request) {
			p.completeWith(slot, completion{seq: r.seq, code: 5, n: 0})
		},
		"short results table": func(p *fakePlugin, slot uint32, r request) {
			p.completeWith(slot, completion{seq: r.seq, n: uint32(r.arg-1) * batchResultSize})
		},
		"output past entry": func(p *fakePlugin, slot uint32, r request) {
			base := p.g.outOff(slot)
			encodeBatchResult(p.mem[base:], BatchResult{N: 4})
			encodeBatchResult(p.mem[base+batchResultSize:], BatchResult{N: 5}) // room is 4
			p.completeWith(slot, completion{seq: r.seq, n: 2 * batchResultSize})
		},
		"message past entry": func(p *fakePlugin, slot uint32, r request) {
			base := p.g.outOff(slot)
			encodeBatchResult(p.mem[base:], BatchResult{Code: 9, N: 5})
			p.completeWith(slot, completion{seq: r.seq, n: 2 * batchResultSize})
		},
		"huge n": func(p *fakePlugin, slot uint32, r request) {
			base := p.g.outOff(slot)
			encodeBatchResult(p.mem[base+batchResultSize:], BatchResult{N: math.MaxUint32})
			p.completeWith(slot, completion{seq: r.seq, n: 2 * batchResultSize})
		},
	}
	for name, answer := range cases {
		t.Run(name, func(t *testing.T) {
			c := withFake(t, ClientOptions{Slots: 2, SlotInput: 8192, SlotOutput: 8192}, func(p *fakePlugin) {
				slot, r, err := p.readRequest()
				if err != nil {
					t.Errorf("fake read request: %v", err)
					return
				}
				if r.op != OpBatch || r.arg != 2 {
					t.Errorf("request op %#x arg %d, want a batch of 2", r.op, r.arg)
				}
				answer(p, slot, r)
				p.hangup()
			})
			l, _ := c.TryLease()
			defer l.Release()
			entries := layBatch(t, l, []batchItem{{op: opEcho, in: []byte("abcd"), outCap: 4}, {op: opEcho, in: []byte("efgh"), outCap: 4}})
			res := make([]BatchResult, 2)
			if err := l.CallBatch(testCtx(t), entries, res); !isClosedProtocol(err) {
				t.Fatalf("got %v; want ErrClosed and ErrProtocol", err)
			}
		})
	}
}

// TestBatchHostileHost: batch tables a real Client never writes make Serve
// stop with ErrProtocol, without running the handler on the bad entry.
func TestBatchHostileHost(t *testing.T) {
	g := mustGeometry(t, 2, 8192, 8192)
	good := BatchEntry{Op: opEcho, InOff: BatchDataOffset, InLen: 4, OutOff: BatchDataOffset, OutCap: 4}
	req := request{op: OpBatch, arg: 2, inLen: BatchDataOffset + 4, outCap: BatchDataOffset + 4}
	type tc struct {
		req    func(r request) request
		second func(e BatchEntry) BatchEntry
		raw    func(rec []byte) // edits the second entry's bytes
	}
	id := func(r request) request { return r }
	cases := map[string]tc{
		"no entries":          {req: func(r request) request { r.arg = 0; return r }},
		"negative count":      {req: func(r request) request { r.arg = -1; return r }},
		"too many entries":    {req: func(r request) request { r.arg = MaxBatch + 1; return r }},
		"input past request":  {req: id, second: func(e BatchEntry) BatchEntry { e.InLen = 5; return e }},
		"output past request": {req: id, second: func(e BatchEntry) BatchEntry { e.OutCap = 5; return e }},
		"input in table":      {req: id, second: func(e BatchEntry) BatchEntry { e.InOff = 0; return e }},
		"output in table":     {req: id, second: func(e BatchEntry) BatchEntry { e.OutOff = 8; return e }},
		"offset wraps":        {req: id, second: func(e BatchEntry) BatchEntry { e.InOff, e.InLen = math.MaxUint32, 8; return e }},
		"nested batch":        {req: id, second: func(e BatchEntry) BatchEntry { e.Op = OpBatch; return e }},
		"reserved field":      {req: id, raw: func(rec []byte) { rec[4] = 1 }},
	}
	for name, cs := range cases {
		t.Run(name, func(t *testing.T) {
			var calls int64
			var mu sync.Mutex
			r := serveRaw(t, &calls, &mu)
			mem := r.handshake(t, g)
			base := g.inOff(1)
			second := good
			if cs.second != nil {
				second = cs.second(good)
			}
			encodeBatchEntry(mem[base:], good)
			encodeBatchEntry(mem[base+batchEntrySize:], second)
			if cs.raw != nil {
				cs.raw(mem[base+batchEntrySize : base+2*batchEntrySize])
			}
			bad := cs.req(req)
			bad.seq = 1
			r.post(mem, g, 1, bad)
			if err := r.serveErr(t); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Serve: %v, want ErrProtocol", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if calls > 1 {
				t.Fatalf("handler ran %d times, at most the good first entry may run", calls)
			}
		})
	}
}

// TestBatchVersion2Host: a plugin serves a version-2 host (answering in
// version 2) and, for it, OpBatch is no batch: the request fails like any
// op the data plane reserves, and the channel goes on.
func TestBatchVersion2Host(t *testing.T) {
	g := mustGeometry(t, 2, 8192, 8192)
	var calls int64
	var mu sync.Mutex
	r := serveRaw(t, &calls, &mu)
	mem := r.handshakeVersion(t, g, 2)
	encodeBatchEntry(mem[g.inOff(0):], BatchEntry{Op: opEcho, InOff: BatchDataOffset, InLen: 4, OutOff: BatchDataOffset, OutCap: 4})
	r.post(mem, g, 0, request{seq: 1, op: OpBatch, arg: 1, inLen: BatchDataOffset + 4, outCap: BatchDataOffset + 4})
	if c := r.awaitDone(t, mem, g, 0, 1); c.code != CodeBadHandlerResult {
		t.Fatalf("OpBatch from a version-2 host: %+v, want CodeBadHandlerResult", c)
	}
	copy(mem[g.inOff(1):], "v2ok")
	r.post(mem, g, 1, request{seq: 1, op: opEcho, inLen: 4, outCap: 4})
	if c := r.awaitDone(t, mem, g, 1, 1); c.code != 0 || string(mem[g.outOff(1):][:c.n]) != "v2ok" {
		t.Fatalf("echo from a version-2 host: %+v", c)
	}
	r.conn.Close()
	if err := r.serveErr(t); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("handler ran %d times, want 1 (the echo)", calls)
	}
}

// TestBatchAbandoned: a batch whose ctx ends keeps the lease busy until
// the plugin completes it, then the lease works again.
func TestBatchAbandoned(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 8192, SlotOutput: 8192}, testHandler, 1)
	l, _ := c.TryLease()
	defer l.Release()
	entries := layBatch(t, l, []batchItem{{op: opSleep, arg: 200, in: []byte("slow"), outCap: 4}})
	res := make([]BatchResult, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.CallBatch(ctx, entries, res); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow batch: %v, want DeadlineExceeded", err)
	}
	if err := l.CallBatch(testCtx(t), entries, res); !errors.Is(err, errLeaseBusy) {
		t.Fatalf("batch while the abandoned one runs: %v, want errLeaseBusy", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries = layBatch(t, l, []batchItem{{op: opEcho, in: []byte("back"), outCap: 4}})
		err := l.CallBatch(testCtx(t), entries, res)
		if err == nil {
			break
		}
		if !errors.Is(err, errLeaseBusy) || time.Now().After(deadline) {
			t.Fatalf("batch after the plugin finished: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if out, err := l.BatchOutput(entries[0], res[0]); err != nil || string(out) != "back" {
		t.Fatalf("%q, %v", out, err)
	}
}

// TestBatchConcurrent: batches from several goroutines on their own leases
// run on several plugin workers at once, next to plain calls.
func TestBatchConcurrent(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 8, SlotInput: 64 << 10, SlotOutput: 64 << 10, Leases: 4}, testHandler, 3)
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 50 {
				if g%2 == 1 {
					in := randBytes(r, r.IntN(4096))
					if out, err := c.Call(context.Background(), opEcho, 0, in, nil, len(in)); err != nil || !bytes.Equal(out, in) {
						t.Errorf("caller %d call %d: %v", g, i, err)
						return
					}
					continue
				}
				l, ok := c.TryLease()
				if !ok {
					continue
				}
				items := make([]batchItem, 1+r.IntN(16))
				for k := range items {
					in := randBytes(r, r.IntN(2048))
					items[k] = batchItem{op: opEcho, in: in, outCap: uint32(len(in))}
				}
				entries := layBatch(t, l, items)
				res := make([]BatchResult, len(entries))
				err := l.CallBatch(context.Background(), entries, res)
				for k := range items {
					if err != nil {
						break
					}
					var out []byte
					if out, err = l.BatchOutput(entries[k], res[k]); err == nil && !bytes.Equal(out, items[k].in) {
						err = fmt.Errorf("entry %d: wrong bytes", k)
					}
				}
				l.Release()
				if err != nil {
					t.Errorf("batcher %d batch %d: %v", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestBatchChildProcess runs batches across a real process boundary.
func TestBatchChildProcess(t *testing.T) {
	cmd, host, stderr := childCmd(t)
	c, err := NewClient(testCtx(t), host, ClientOptions{Slots: 4, SlotInput: 256 << 10})
	if err != nil {
		t.Fatalf("NewClient: %v (child: %s)", err, stderr)
	}
	r := rand.New(rand.NewPCG(5, 6))
	for round := range 10 {
		l, ok := c.TryLease()
		if !ok {
			t.Fatal("no lease")
		}
		items := make([]batchItem, 16)
		for k := range items {
			in := randBytes(r, 4096+r.IntN(8192))
			items[k] = batchItem{op: opXor, arg: 0x5a, in: in, outCap: uint32(len(in))}
		}
		entries := layBatch(t, l, items)
		res := make([]BatchResult, len(entries))
		if err := l.CallBatch(testCtx(t), entries, res); err != nil {
			t.Fatalf("round %d: %v (child: %s)", round, err, stderr)
		}
		for k, it := range items {
			out, err := l.BatchOutput(entries[k], res[k])
			if err != nil || len(out) != len(it.in) {
				t.Fatalf("round %d entry %d: %d bytes, %v", round, k, len(out), err)
			}
			for i := range out {
				if out[i] != it.in[i]^0x5a {
					t.Fatalf("round %d entry %d byte %d wrong", round, k, i)
				}
			}
		}
		l.Release()
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v (%s)", err, stderr)
	}
}

func TestBatchZeroAllocs(t *testing.T) {
	c := startServe(t, ClientOptions{Slots: 2, SlotInput: 16 << 10}, testHandler, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	entries := make([]BatchEntry, 8)
	results := make([]BatchResult, 8)
	for i := range entries {
		off := uint32(BatchDataOffset + 8*i)
		entries[i] = BatchEntry{Op: opEcho, InOff: off, InLen: 8, OutOff: off, OutCap: 8}
	}
	var err error
	allocs := testing.AllocsPerRun(200, func() {
		l, ok := c.TryLease()
		if !ok {
			err = errors.New("no lease")
			return
		}
		defer l.Release()
		copy(l.Input()[BatchDataOffset:], "pagepagepagepagepagepagepagepagepagepagepagepagepagepagepagepage")
		if err = l.CallBatch(ctx, entries, results); err != nil {
			return
		}
		for i := range entries {
			var out []byte
			if out, err = l.BatchOutput(entries[i], results[i]); err != nil {
				return
			}
			if string(out) != "pagepage" {
				err = errors.New("wrong output")
				return
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 {
		t.Fatalf("%v allocations per lease, batch of 8 and release; want 0", allocs)
	}
}
