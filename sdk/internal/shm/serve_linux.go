package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxRecvFDs sizes the control buffer for the hello: one descriptor is
// expected, room for a few more lets us see (and close) what a confused host
// sent instead of losing them to MSG_CTRUNC.
const maxRecvFDs = 8

// server is one Serve call's state.
type server struct {
	conn *net.UnixConn
	h    Handler

	// Set once the arena is mapped, before any worker starts.
	mem      []byte
	g        geometry
	doorbell *uint32
	sleepers *uint32
	// taken[i] is the last request sequence a worker claimed on slot i.
	// It is plugin-private, so the host cannot make two workers run one
	// request; a worker claims a posted request by a CAS on it.
	taken []atomic.Uint32
	// batches: the host speaks version 3, so an OpBatch request is a
	// batch table. From a version-2 host it is an ordinary op.
	batches bool
	// wakeFD is the host-wake eventfd of a version-4 host (-1 before
	// version 4, whose host sleeps on the slot's futex word instead).
	wakeFD int

	stopping atomic.Bool
	stopped  sync.Once
	cause    error // nil for a clean close by the host
}

// stop records why serving ends (the first reason wins), closes the socket
// and wakes every parked worker.
func (s *server) stop(cause error) {
	s.stopped.Do(func() {
		s.cause = cause
		s.stopping.Store(true)
		s.conn.Close()
		// A worker that read stopping as false read the doorbell before
		// that, so this bump ends its sleep. The mapping is still there:
		// Serve unmaps only after every worker has returned and this
		// call has (it calls stop itself, which waits for the Once).
		if s.doorbell != nil {
			bump(s.doorbell, math.MaxInt32)
		}
	})
}

// Serve is the plugin side: it receives the arena over conn, maps it,
// acknowledges, then runs h on requests with workers goroutines until the
// host closes the socket (Serve returns nil), ctx ends (ctx.Err()), or the
// host breaks the protocol (an error wrapping ErrProtocol). Serve takes
// ownership of conn and closes it. A panic in h is not recovered: it ends
// the plugin process, and the host sees ErrClosed.
func Serve(ctx context.Context, conn *os.File, h Handler, workers int) error {
	if h == nil {
		if conn != nil {
			conn.Close()
		}
		return errors.New("shm serve: nil handler")
	}
	workers = max(workers, 1)
	uc, err := seqpacketConn(conn)
	if err != nil {
		return fmt.Errorf("shm serve: %w", err)
	}
	s := &server{conn: uc, h: h, wakeFD: -1}

	// The watcher covers the whole life of Serve, the hello included, and
	// outlives the workers so that ctx can still stop them.
	var watcher sync.WaitGroup
	done := make(chan struct{})
	watcher.Go(func() {
		select {
		case <-ctx.Done():
			s.stop(ctx.Err())
		case <-done:
		}
	})

	var unmapErr error
	mem, g, version, wakeFD, err := s.accept()
	if err != nil {
		s.stop(err)
	} else {
		s.mem, s.g, s.batches, s.wakeFD = mem, g, version >= batchVersion, wakeFD
		s.doorbell, s.sleepers = word(mem, hdrDoorbell), word(mem, hdrSleepers)
		s.taken = make([]atomic.Uint32, g.slots)
		// Workers return only after stop, and the watcher calls stop when
		// the socket ends, so once they are all gone s.cause is final.
		var workersWG sync.WaitGroup
		workersWG.Go(s.watch)
		for w := range workers {
			workersWG.Go(func() { s.work(uint32(w)) })
		}
		workersWG.Wait()
		// Workers return once they see stopping, which stop sets before
		// its doorbell bump: wait for that stop to finish (Once.Do
		// returns only after the running call has) before unmapping
		// the doorbell it bumps. Already stopped, this changes nothing.
		// (A CI run under -race faulted on the bump of an unmapped
		// arena: the ctx watcher was still in stop.)
		s.stop(nil)
		unmapErr = unix.Munmap(mem)
		if wakeFD >= 0 {
			unix.Close(wakeFD)
		}
	}
	close(done)
	watcher.Wait()
	if s.cause == nil && unmapErr != nil {
		return fmt.Errorf("shm serve: unmap arena: %w", unmapErr)
	}
	if s.cause == nil || errors.Is(s.cause, context.Canceled) || errors.Is(s.cause, context.DeadlineExceeded) {
		return s.cause
	}
	return fmt.Errorf("shm serve: %w", s.cause)
}

// accept receives the hello and its descriptors (the memfd, and from a
// version-4 host the host-wake eventfd), maps the arena and acknowledges.
// A hello it cannot honour is refused with a status before it gives up,
// so the host can say why. wakeFD is -1 for a host before version 4.
func (s *server) accept() (mem []byte, g geometry, version uint32, wakeFD int, err error) {
	var msg [maxMessage]byte
	oob := make([]byte, unix.CmsgSpace(maxRecvFDs*4))
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(msg[:], oob)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, geometry{}, 0, -1, fmt.Errorf("wait for hello: %w: host closed the socket", ErrClosed)
		}
		return nil, geometry{}, 0, -1, fmt.Errorf("wait for hello: %w", err)
	}
	fds, err := receivedFDs(oob[:oobn])
	if err != nil {
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w: %w", ErrProtocol, err)
	}
	// The mapping, once made, keeps the memory; only the eventfd is kept
	// (taken out of fds below once it has passed its checks).
	defer func() { closeFDs(fds) }()
	if flags&unix.MSG_CTRUNC != 0 {
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w: more than %d descriptors attached", ErrProtocol, maxRecvFDs)
	}
	h, err := decodeHello(msg[:n])
	if err != nil {
		return nil, geometry{}, 0, -1, err
	}
	if h.version < minProtocolVersion || h.version > protocolVersion {
		s.refuse(ackBadVersion)
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: version %d, this plugin speaks %d to %d", h.version, minProtocolVersion, protocolVersion)
	}
	want := 1
	if h.version >= eventfdVersion {
		want = 2
	}
	if len(fds) != want {
		s.refuse(ackBadArena)
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w: %d descriptors attached, want %d for version %d", ErrProtocol, len(fds), want, h.version)
	}
	g, err = newGeometry(h.slots, h.slotIn, h.slotOut)
	if err == nil && h.arenaSize != g.size() {
		err = fmt.Errorf("arena geometry: %w: announced %d bytes, layout needs %d", ErrProtocol, h.arenaSize, g.size())
	}
	if err != nil {
		s.refuse(ackBadArena)
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w", err)
	}
	wakeFD = -1
	if want == 2 {
		if err := checkWakeFD(fds[1]); err != nil {
			s.refuse(ackBadArena)
			return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w: %w", ErrProtocol, err)
		}
	}
	mem, err = mapArena(fds[0], g)
	if err != nil {
		s.refuse(ackBadArena)
		return nil, geometry{}, 0, -1, fmt.Errorf("hello: %w", err)
	}
	// The host's version: an older host checks the ack against its own.
	encodeAck(msg[:], ack{version: h.version, status: ackOK})
	if _, err := s.conn.Write(msg[:ackSize]); err != nil {
		unix.Munmap(mem)
		return nil, geometry{}, 0, -1, fmt.Errorf("send ack: %w", err)
	}
	if want == 2 {
		wakeFD, fds = fds[1], fds[:1]
	}
	return mem, g, h.version, wakeFD, nil
}

// checkWakeFD makes sure the hello's second descriptor is an eventfd and
// cannot block the plugin: a worker writes it with a raw syscall (no Go
// scheduler involvement), so a blocking write would stall the worker with
// its P. O_NONBLOCK is set on the open file description, which the host
// shares; the host created it non-blocking anyway.
func checkWakeFD(fd int) error {
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return fmt.Errorf("host-wake descriptor: %w", err)
	}
	if link != "anon_inode:[eventfd]" {
		return fmt.Errorf("host-wake descriptor is %q, want an eventfd", link)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("host-wake descriptor: set non-blocking: %w", err)
	}
	return nil
}

// refuse tells the host why its hello was rejected. It is best effort: the
// socket is closed right after either way.
func (s *server) refuse(status uint32) {
	var msg [ackSize]byte
	encodeAck(msg[:], ack{version: protocolVersion, status: status})
	s.conn.Write(msg[:])
}

// watch reads the socket, on which a well-behaved host sends nothing after
// the hello: it is there to notice the host's exit or close (EOF) at once.
func (s *server) watch() {
	var buf [maxMessage]byte
	n, err := s.conn.Read(buf[:])
	switch {
	case s.stopping.Load():
		// Already stopping (ctx, or a worker's protocol error): the read
		// ended because stop closed the socket.
	case err == nil:
		s.stop(fmt.Errorf("socket: %w: unexpected %d-byte message after the hello", ErrProtocol, n))
	case hostGone(err):
		s.stop(nil)
	default:
		s.stop(fmt.Errorf("socket: %w", err))
	}
}

// work serves requests until stop. A worker looks for a posted request in
// every slot, starting at its own offset so that workers spread out; when
// there is none it parks on the doorbell futex. Parking mirrors the host's
// post: read the doorbell, count in sleepers, look once more, sleep on the
// value read first. A request posted at any point either is found by the
// second look or changes the doorbell (and, with sleepers counted, gets a
// wake), so it is never left unserved while a worker sleeps.
func (s *server) work(start uint32) {
	next := start % s.g.slots
	for {
		bell := atomic.LoadUint32(s.doorbell)
		if s.stopping.Load() {
			return
		}
		if idx, seq, ok := s.claim(&next); ok {
			if err := s.serveSlot(idx, seq); err != nil {
				s.stop(err)
				return
			}
			continue
		}
		atomic.AddUint32(s.sleepers, 1)
		idx, seq, ok := s.claim(&next)
		if !ok {
			futexSleep(s.doorbell, bell, 0)
		}
		atomic.AddUint32(s.sleepers, ^uint32(0))
		if ok {
			if err := s.serveSlot(idx, seq); err != nil {
				s.stop(err)
				return
			}
		}
	}
}

// claim finds a slot whose posted request sequence differs from the last
// one claimed there and takes it. next rotates so that one busy slot does
// not starve the others.
func (s *server) claim(next *uint32) (uint32, uint32, bool) {
	n := s.g.slots
	for k := range n {
		i := (*next + k) % n
		// taken before the posted sequence: a worker that stalls between
		// the two loads then fails its CAS if another claimed meanwhile,
		// rather than claiming a request that is long gone.
		last := s.taken[i].Load()
		seq := atomic.LoadUint32(word(s.mem, s.g.ctlOff(i)+slotReqSeq))
		if seq != last && s.taken[i].CompareAndSwap(last, seq) {
			*next = (i + 1) % n
			return i, seq, true
		}
	}
	return 0, 0, false
}

// serveSlot runs the claimed request seq of slot idx and publishes its
// completion. The request record is copied out of shared memory once and
// only the copy is checked and used: the host cannot change it afterwards.
func (s *server) serveSlot(idx, seq uint32) error {
	ctl := s.g.ctlOff(idx)
	var rec [requestSize]byte
	copy(rec[:], s.mem[ctl+slotReq:ctl+slotReq+requestSize])
	r, err := decodeRequest(rec[:], s.g, seq)
	if err != nil {
		return fmt.Errorf("slot %d: %w", idx, err)
	}
	var c completion
	if r.op == OpBatch && s.batches {
		if c, err = s.runBatch(idx, r); err != nil {
			return fmt.Errorf("slot %d: %w", idx, err)
		}
	} else {
		c = s.run(idx, r)
	}
	// The record minus its sequence (encodeCompletion's layout).
	rec2 := s.mem[ctl+slotDone : ctl+slotDone+completionSize]
	le.PutUint32(rec2[4:], c.code)
	le.PutUint32(rec2[8:], c.n)
	le.PutUint32(rec2[12:], 0)
	// The sequence goes last: it is what publishes code and n. Then the
	// host's parking protocol: it sets parked before it re-checks the
	// sequence, so if it is not looking it is asleep (or about to sleep on
	// a wake value the bump changes).
	atomic.StoreUint32(word(s.mem, ctl+slotDoneSeq), seq)
	if p := atomic.LoadUint32(word(s.mem, ctl+slotParked)); p != 0 {
		s.wakeHost(ctl, p)
	}
	return nil
}

// wakeHost wakes a host that parked (parked is the word's value) waiting
// for the completion just published on the slot whose control block is
// at ctl. A version-4 host waiting in its netpoller (parkedEventfd) gets
// one raw write of 1 to the host-wake eventfd. The write cannot block
// (checkWakeFD set O_NONBLOCK) and its only failure, EAGAIN at a counter
// of 2^64-2, means the host has a wake-up pending anyway, so errors are
// ignored. A host asleep on the slot's futex word (parkedFutex, the only
// value before version 4) gets a bump of it.
func (s *server) wakeHost(ctl uint64, parked uint32) {
	if parked == parkedFutex || s.wakeFD < 0 {
		bump(word(s.mem, ctl+slotWake), 1)
		return
	}
	one := [8]byte{1}
	unix.RawSyscall(unix.SYS_WRITE, uintptr(s.wakeFD), uintptr(unsafe.Pointer(&one[0])), 8)
}

// hostGone reports whether err only says the host closed its end, which is
// how a host ends the session; requests it abandoned need no completion.
func hostGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)
}

// run calls the handler on the request's regions of slot idx. r has passed
// decodeRequest, so both lengths fit the slot's regions. Capacities are
// clipped so that an append in the handler cannot run into the next region.
// An error message may use the slot's whole output region, not just the
// capacity the caller asked for, so a maxOut of 0 still gets its text.
func (s *server) run(idx uint32, r request) completion {
	inOff, outOff := s.g.inOff(idx), s.g.outOff(idx)
	inEnd, outEnd := inOff+uint64(r.inLen), outOff+uint64(r.outCap)
	c := s.handle(r.op, r.arg, s.mem[inOff:inEnd:inEnd], s.mem[outOff:outEnd:outEnd],
		s.mem[outOff:outOff+uint64(min(s.g.slotOut, MaxErrorMessage))])
	c.seq = r.seq
	return c
}

// runBatch runs the entries of batch request r on slot idx, one after the
// other, writing each result into the results table as it goes; the
// completion (stored by serveSlot) publishes them all at once. Each entry
// is copied out of shared memory once and only the copy is checked and
// used. An entry that breaks the layout is a protocol violation (the
// error), as a bad request record is; a handler failure is only that
// entry's result.
func (s *server) runBatch(idx uint32, r request) (completion, error) {
	if r.arg < 1 || r.arg > MaxBatch {
		return completion{}, fmt.Errorf("batch request %d: %w: %d entries, want 1 to %d", r.seq, ErrProtocol, r.arg, MaxBatch)
	}
	count := uint64(r.arg)
	inBase, outBase := s.g.inOff(idx), s.g.outOff(idx)
	for i := range count {
		var rec [batchEntrySize]byte
		off := inBase + i*batchEntrySize
		copy(rec[:], s.mem[off:off+batchEntrySize])
		e, err := decodeBatchEntry(rec[:], r.inLen, r.outCap)
		if err != nil {
			return completion{}, fmt.Errorf("batch request %d entry %d: %w", r.seq, i, err)
		}
		inOff, outOff := inBase+uint64(e.InOff), outBase+uint64(e.OutOff)
		inEnd, outEnd := inOff+uint64(e.InLen), outOff+uint64(e.OutCap)
		out := s.mem[outOff:outEnd:outEnd]
		c := s.handle(e.Op, e.Arg, s.mem[inOff:inEnd:inEnd], out, out[:min(len(out), MaxErrorMessage)])
		res := outBase + i*batchResultSize
		encodeBatchResult(s.mem[res:res+batchResultSize], BatchResult{Code: c.code, N: c.n})
	}
	return completion{seq: r.seq, n: uint32(count * batchResultSize)}, nil
}

// handle runs the Handler on in and out and turns what it returns into a
// completion (without sequence). A result outside out, or a reserved
// code, becomes CodeBadHandlerResult; a failure's message is copied into
// msgRoom, truncated to fit.
func (s *server) handle(op uint32, arg int64, in, out, msgRoom []byte) completion {
	if op >= OpReserved {
		// Only from a version-2 host (a version-3 host cannot send one
		// outside a batch, and runBatch refuses them inside): not for
		// the Handler, whose op space ends below OpReserved.
		return completion{code: CodeBadHandlerResult, n: uint32(copy(msgRoom, fmt.Sprintf("op %#x is reserved for the data plane", op)))}
	}
	n, code, msg := s.h(op, arg, in, out)
	if code == 0 && n >= 0 && n <= len(out) {
		return completion{n: uint32(n)}
	}
	if code == 0 || code >= CodeReserved {
		msg = fmt.Sprintf("handler for op %d returned n=%d code=%#x with a %d-byte output buffer", op, n, code, len(out))
		code = CodeBadHandlerResult
	}
	return completion{code: code, n: uint32(copy(msgRoom, msg))}
}
