package shm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

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

	stopped sync.Once
	cause   error // nil for a clean close by the host
}

// stop records why serving ends (the first reason wins) and closes the
// socket, which wakes every worker blocked in a read.
func (s *server) stop(cause error) {
	s.stopped.Do(func() {
		s.cause = cause
		s.conn.Close()
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
	s := &server{conn: uc, h: h}

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
	mem, g, err := s.accept()
	if err != nil {
		s.stop(err)
	} else {
		// Every worker calls stop on its way out, so once they are all gone
		// the socket is closed and s.cause is final.
		var workersWG sync.WaitGroup
		for range workers {
			workersWG.Go(func() { s.work(mem, g) })
		}
		workersWG.Wait()
		unmapErr = unix.Munmap(mem)
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

// accept receives the hello and its memfd, maps the arena and acknowledges.
// A hello it cannot honour is refused with a status before it gives up, so
// the host can say why.
func (s *server) accept() ([]byte, geometry, error) {
	var msg [maxMessage]byte
	oob := make([]byte, unix.CmsgSpace(maxRecvFDs*4))
	n, oobn, flags, _, err := s.conn.ReadMsgUnix(msg[:], oob)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, geometry{}, fmt.Errorf("wait for hello: %w: host closed the socket", ErrClosed)
		}
		return nil, geometry{}, fmt.Errorf("wait for hello: %w", err)
	}
	fds, err := receivedFDs(oob[:oobn])
	if err != nil {
		return nil, geometry{}, fmt.Errorf("hello: %w: %w", ErrProtocol, err)
	}
	// The mapping, once made, keeps the memory; no descriptor is kept.
	defer closeFDs(fds)
	if flags&unix.MSG_CTRUNC != 0 {
		return nil, geometry{}, fmt.Errorf("hello: %w: more than %d descriptors attached", ErrProtocol, maxRecvFDs)
	}
	h, err := decodeHello(msg[:n])
	if err != nil {
		return nil, geometry{}, err
	}
	if len(fds) != 1 {
		s.refuse(ackBadArena)
		return nil, geometry{}, fmt.Errorf("hello: %w: %d descriptors attached, want 1", ErrProtocol, len(fds))
	}
	if h.version != protocolVersion {
		s.refuse(ackBadVersion)
		return nil, geometry{}, fmt.Errorf("hello: version %d, this plugin speaks %d", h.version, protocolVersion)
	}
	g, err := newGeometry(h.slots, h.slotIn, h.slotOut)
	if err == nil && h.arenaSize != g.size() {
		err = fmt.Errorf("arena geometry: %w: announced %d bytes, layout needs %d", ErrProtocol, h.arenaSize, g.size())
	}
	if err != nil {
		s.refuse(ackBadArena)
		return nil, geometry{}, fmt.Errorf("hello: %w", err)
	}
	mem, err := mapArena(fds[0], g)
	if err != nil {
		s.refuse(ackBadArena)
		return nil, geometry{}, fmt.Errorf("hello: %w", err)
	}
	encodeAck(msg[:], ack{version: protocolVersion, status: ackOK})
	if _, err := s.conn.Write(msg[:ackSize]); err != nil {
		unix.Munmap(mem)
		return nil, geometry{}, fmt.Errorf("send ack: %w", err)
	}
	return mem, g, nil
}

// refuse tells the host why its hello was rejected. It is best effort: the
// socket is closed right after either way.
func (s *server) refuse(status uint32) {
	var msg [ackSize]byte
	encodeAck(msg[:], ack{version: protocolVersion, status: status})
	s.conn.Write(msg[:])
}

// work serves requests until the socket closes. Workers read the socket
// directly: SEQPACKET hands each read exactly one whole request, so no
// dispatcher goroutine (and no extra hand-off) is needed.
func (s *server) work(mem []byte, g geometry) {
	var rb [maxMessage]byte
	var cb [completionSize]byte
	for {
		n, err := s.conn.Read(rb[:])
		if err != nil {
			if hostGone(err) {
				s.stop(nil)
			} else {
				s.stop(fmt.Errorf("receive request: %w", err))
			}
			return
		}
		r, err := decodeRequest(rb[:n])
		if err == nil {
			err = g.checkRequest(r)
		}
		if err != nil {
			s.stop(err)
			return
		}
		encodeCompletion(cb[:], s.run(mem, g, r))
		if _, err := s.conn.Write(cb[:]); err != nil {
			if hostGone(err) {
				s.stop(nil)
			} else {
				s.stop(fmt.Errorf("send completion: %w", err))
			}
			return
		}
	}
}

// hostGone reports whether err only says the host closed its end, which is
// how a host ends the session; requests it abandoned need no completion.
func hostGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)
}

// run calls the handler on the request's regions of the arena. r has passed
// checkRequest, so every slice below is inside the mapping. Capacities are
// clipped so that an append in the handler cannot run into the next region.
func (s *server) run(mem []byte, g geometry, r request) completion {
	inEnd, outEnd := r.inOff+uint64(r.inLen), r.outOff+uint64(r.outCap)
	in := mem[r.inOff:inEnd:inEnd]
	out := mem[r.outOff:outEnd:outEnd]
	n, code, msg := s.h(r.op, r.arg, in, out)
	if code == 0 && n >= 0 && n <= len(out) {
		return completion{slot: r.slot, seq: r.seq, n: uint32(n)}
	}
	if code == 0 || code >= CodeReserved {
		msg = fmt.Sprintf("handler for op %d returned n=%d code=%#x with a %d-byte output buffer", r.op, n, code, len(out))
		code = CodeBadHandlerResult
	}
	// The message may use the slot's whole output region, not just the
	// capacity the caller asked for, so a maxOut of 0 still gets its text.
	slotOutEnd := g.outOff(r.slot) + uint64(g.slotOut)
	room := mem[r.outOff:slotOutEnd]
	room = room[:min(len(room), MaxErrorMessage)]
	return completion{slot: r.slot, seq: r.seq, code: code, n: uint32(copy(room, msg))}
}
