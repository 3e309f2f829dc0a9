package transport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// Changing the number of data connections of a live session
// (docs/transport.md has the protocol and why it is built this way).
//
// Growing attaches new data connections to the current epoch, exactly as
// a resume attaches them to a new one: the frames stay in the one send
// queue, and the new connections' writers simply start taking from it.
// Shrinking retires the highest-numbered connections: each side's writer
// stops at a frame boundary and writes RETIRE, carrying the last sequence
// number it put on that connection; the peer's reader, which by TCP's
// order has read every frame before it, checks that number, answers with
// its own RETIRE (the listener) and the connection closes. Nothing is
// replayed and nothing waits: the other connections carry on meanwhile.
// A connection that breaks while retiring ends the epoch like any other,
// and the resume's receipts make that exact.

// SetStreams asks for n data connections (1..64) and returns at once: the
// session's supervisor adds or retires connections in the background,
// between frames, and the stream goes on meanwhile. Only the dialing side
// can do this, and only with a peer that has the capability. Resize is
// the same and waits for the outcome; Stats reports it too.
func (s *Session) SetStreams(n int) error {
	if err := s.requestStreams(n); err != nil {
		return err
	}
	kick(s.resizeKick)
	return nil
}

func (s *Session) requestStreams(n int) error {
	switch {
	case !s.isDialer:
		return fmt.Errorf("transport: set streams: only the dialing side changes the connections: %w", ErrUnsupported)
	case !s.resizable:
		return fmt.Errorf("transport: set streams: the peer cannot change the connections of a live session (no %q capability): %w", capResize, ErrUnsupported)
	case n < 1 || n > hardMaxStreams:
		return fmt.Errorf("transport: set streams: %d out of range 1..%d", n, hardMaxStreams)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return fmt.Errorf("transport: set streams: %w", s.err)
	}
	s.streams = n
	s.resizeGen++
	return nil
}

// Resize asks for n data connections and waits until the session has
// applied the request. It returns the number of data connections then in
// use and, when that is not n, why (a refusal by the peer matches
// ErrRefused; a connection that could not be made, its dial error). A link
// failure in the middle is repaired by a resume with n connections.
func (s *Session) Resize(ctx context.Context, n int) (int, error) {
	if err := s.requestStreams(n); err != nil {
		return 0, err
	}
	s.mu.Lock()
	gen := s.resizeGen
	s.mu.Unlock()
	kick(s.resizeKick)
	for {
		s.mu.Lock()
		if s.resizeApplied >= gen {
			got, err := s.activeStreamsLocked(), s.resizeErr
			s.mu.Unlock()
			return got, err
		}
		if s.err != nil {
			err := s.err
			s.mu.Unlock()
			return 0, fmt.Errorf("transport: resize: %w", err)
		}
		ch := s.resizeDone
		s.mu.Unlock()
		select {
		case <-ch:
		case <-s.done:
		case <-ctx.Done():
			return 0, fmt.Errorf("transport: resize to %d connections: %w", n, ctx.Err())
		}
	}
}

// activeStreamsLocked counts the current epoch's data connections that
// carry frames (attached, not retiring).
func (s *Session) activeStreamsLocked() int {
	if s.ep == nil || s.ep.failed {
		return 0
	}
	return len(s.activeLocked(s.ep))
}

// activeLocked lists ep's data connections that are not retiring, by
// stream number.
func (s *Session) activeLocked(ep *epoch) []*wconn {
	var out []*wconn
	for _, c := range ep.conns {
		if c.stream > 0 && !c.retiring {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *wconn) int { return a.stream - b.stream })
	return out
}

// applyResize runs on the dialer's supervisor: it brings ep to the wanted
// number of data connections and records the outcome. If ep ends first,
// the request stays pending: the resume builds the next epoch with the
// wanted count and the supervisor answers after it.
func (s *Session) applyResize(ep *epoch) {
	s.mu.Lock()
	if ep.failed || s.err != nil {
		s.mu.Unlock()
		kick(s.resizeKick)
		return
	}
	gen := s.resizeGen
	var limitErr error
	if s.peerMaxStreams > 0 && s.streams > s.peerMaxStreams {
		limitErr = fmt.Errorf("transport: resize to %d connections: the peer took at most %d: %w", s.streams, s.peerMaxStreams, ErrRefused)
		s.streams = s.peerMaxStreams
	}
	target := s.streams
	active := s.activeLocked(ep)
	var err error
	switch {
	case target > len(active):
		var free []int
		for k := 1; len(free) < target-len(active) && k <= hardMaxStreams; k++ {
			if !ep.streams[k] {
				free = append(free, k)
				ep.streams[k] = true // reserved while it is dialed
			}
		}
		s.mu.Unlock()
		err = s.grow(ep, free)
		s.mu.Lock()
	case target < len(active):
		retire := active[target:]
		for _, c := range retire {
			c.retiring = true
			kick(c.kick)
		}
		s.mu.Unlock()
		for _, c := range retire {
			select {
			case <-c.gone:
			case <-ep.done:
			}
		}
		s.mu.Lock()
	}
	if ep.failed {
		s.mu.Unlock()
		if s.Err() == nil {
			kick(s.resizeKick)
		}
		return
	}
	if err != nil {
		// What could be added is what there is; a later request may try
		// again.
		s.streams = len(s.activeLocked(ep))
	}
	s.resizeApplied = gen
	s.resizeErr = errors.Join(limitErr, err)
	close(s.resizeDone)
	s.resizeDone = make(chan struct{})
	s.mu.Unlock()
}

// grow dials the data connections numbered free and attaches them to ep.
// A refusal for the listener's limit teaches peerMaxStreams.
func (s *Session) grow(ep *epoch, free []int) error {
	ctx, cancel := context.WithTimeout(ep.ctx, s.cfg.HandshakeTimeout)
	defer cancel()
	errs := make([]error, len(free))
	var wg sync.WaitGroup
	for i, k := range free {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, _, err := s.dial.connect(ctx, k, s.attachHello(ep.num, k, nil))
			s.mu.Lock()
			defer s.mu.Unlock()
			if err == nil {
				// Warming needs the kernel's delivery rates to know
				// when to stop.
				_, measurable := readTCPState(c.raw.Conn)
				c.warming = s.warmable && measurable
				if err = s.startConnLocked(ep, c); err == nil {
					s.st.added++
					return
				}
			}
			delete(ep.streams, k)
			if isLimitRefusal(err) && (s.peerMaxStreams == 0 || k-1 < s.peerMaxStreams) {
				s.peerMaxStreams = k - 1
			}
			errs[i] = fmt.Errorf("transport: add connection %d: %w", k, err)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func isLimitRefusal(err error) bool {
	var re *refusedError
	return errors.As(err, &re) && re.code == pb.RefusalCode_REFUSAL_CODE_LIMIT
}

// onRetireLocked handles the peer's RETIRE on data connection c: every
// frame the peer put on c has been read (last is the sequence number of
// the last one, checked against what arrived). The listener answers with
// its own RETIRE; the dialer only accepts one on a connection it retired.
func (s *Session) onRetireLocked(ep *epoch, c *wconn, last uint64) error {
	switch {
	case c.stream == 0:
		return fmt.Errorf("RETIRE on the control connection: %w", ErrBadFrame)
	case !s.resizable:
		return fmt.Errorf("RETIRE on conn %d from a peer without %q: %w", c.stream, capResize, ErrBadFrame)
	case last != c.rseq:
		return fmt.Errorf("RETIRE on conn %d names message %d as its last, but %d arrived last: %w", c.stream, last, c.rseq, ErrBadFrame)
	case s.isDialer && !c.retiring:
		return fmt.Errorf("RETIRE on conn %d, which this side did not retire: %w", c.stream, ErrBadFrame)
	}
	if !s.isDialer && !c.retiring {
		c.retiring = true
		// The number is free again once the answer leaves: the dialer
		// reuses it only after reading that answer.
		delete(ep.streams, c.stream)
		kick(c.kick)
	}
	return errRetired
}

// writeRetire ends c's writer: RETIRE goes out after the last frame it
// wrote, and a wake-up it may have taken is passed on to the others.
func (s *Session) writeRetire(ep *epoch, c *wconn) {
	defer kick(ep.dataKick)
	var f [headerSize]byte
	h := header{typ: frameRetire, dir: s.dir, session: s.id, seq: c.wseq}
	putHeader(f[:], &h, 0)
	if _, err := c.tls.Write(f[:]); err != nil {
		s.linkError(ep, fmt.Errorf("conn %d (epoch %d): write retire: %w", c.stream, ep.num, err))
		return
	}
	s.mu.Lock()
	c.wdone = true
	s.finishRetiredLocked(ep, c)
	s.mu.Unlock()
}

// finishRetiredLocked closes c and takes it out of ep once both sides'
// RETIREs went through it: by then neither side has anything left to read
// on it, so the close cannot reset data in flight.
func (s *Session) finishRetiredLocked(ep *epoch, c *wconn) {
	if !c.wdone || !c.rdone || ep.failed {
		return
	}
	c.raw.Close()
	s.closedWire[0] += c.raw.rd.Load()
	s.closedWire[1] += c.raw.wr.Load()
	ep.conns = slices.DeleteFunc(ep.conns, func(x *wconn) bool { return x == c })
	if s.isDialer {
		delete(ep.streams, c.stream)
	}
	s.st.retired++
	close(c.gone)
}
