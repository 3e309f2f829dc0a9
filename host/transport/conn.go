package transport

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// errStop ends a reader quietly: the frame it read already ended the
// session (a GOAWAY). errRetired ends it because the peer retired the
// connection: nothing more comes on it.
var (
	errStop    = errors.New("stop")
	errRetired = errors.New("retired")
)

// readLoop reads frames from c until the epoch ends. A protocol violation
// ends the session (and tells the peer); any other error only ends the
// epoch, which the dialer then resumes.
func (s *Session) readLoop(ep *epoch, c *wconn) {
	defer ep.wg.Done()
	var hb [headerSize]byte
	var h header
	var deadline time.Time
	var err error
	for {
		// Moving the deadline costs a timer update; do it only when a
		// good part of the idle timeout has passed.
		if now := time.Now(); deadline.Sub(now) < s.cfg.IdleTimeout*3/4 {
			deadline = now.Add(s.cfg.IdleTimeout)
			if err = c.raw.SetReadDeadline(deadline); err != nil {
				break
			}
		}
		if err = s.readFrame(ep, c, c.tls, hb[:], &h); err != nil {
			break
		}
	}
	if c.stream == 0 {
		close(ep.ctlRead)
	}
	switch {
	case errors.Is(err, errStop):
	case errors.Is(err, errRetired):
		s.mu.Lock()
		c.rdone = true
		s.finishRetiredLocked(ep, c)
		s.mu.Unlock()
	case errors.Is(err, ErrProtocol) || errors.Is(err, ErrTooLarge):
		s.fail(fmt.Errorf("transport: session %x: conn %d: %w", s.id[:4], c.stream, err), true)
	default:
		s.mu.Lock()
		if !ep.failed {
			err = fmt.Errorf("conn %d (epoch %d): %w", c.stream, ep.num, err)
		}
		s.failEpochLocked(ep, err)
		s.mu.Unlock()
	}
}

// readFrame reads, checks and files one frame from r, which is c's TLS
// stream (a plain reader in the fuzz test).
func (s *Session) readFrame(ep *epoch, c *wconn, r io.Reader, hb []byte, h *header) error {
	if _, err := io.ReadFull(r, hb); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("read frame header: truncated: %w", err)
		}
		return fmt.Errorf("read frame header: %w", err)
	}
	if err := parseHeader(hb, h); err != nil {
		return err
	}
	if h.session != s.id {
		return fmt.Errorf("%v frame for session %x: %w", h.typ, h.session[:], ErrWrongSession)
	}
	if h.dir == s.dir {
		return fmt.Errorf("%v frame in our own direction (reflected): %w", h.typ, ErrBadFrame)
	}
	switch h.typ {
	case frameData:
		in := s.in[h.lane]
		if int64(h.length) > int64(in.maxMsg) {
			return fmt.Errorf("message %d on %s lane: length %d, limit %d: %w", h.seq, laneName(h.lane), h.length, in.maxMsg, ErrTooLarge)
		}
		buf := getBuffer(int(h.length))
		if n, err := io.ReadFull(r, buf.b); err != nil {
			buf.release()
			return fmt.Errorf("message %d: truncated after %d of %d payload bytes: %w", h.seq, n, h.length, err)
		}
		if crc := frameCRC(hb, buf.b); crc != h.crc {
			buf.release()
			return fmt.Errorf("message %d on %s lane (%d bytes): crc32c %08x, header says %08x: %w", h.seq, laneName(h.lane), h.length, crc, h.crc, ErrBadChecksum)
		}
		if h.lane == laneBulk {
			c.rseq = h.seq
			if tr := s.trace.Load(); tr != nil && c.stream > 0 {
				tr.read(c.stream, h.seq, int(h.length))
			}
		}
		return s.onData(h, buf)
	case framePad:
		return s.onPad(c, r, hb, h)
	case frameGoaway:
		text := make([]byte, h.length)
		if _, err := io.ReadFull(r, text); err != nil {
			return fmt.Errorf("GOAWAY: truncated: %w", err)
		}
		if crc := frameCRC(hb, text); crc != h.crc {
			return fmt.Errorf("GOAWAY: crc32c %08x, header says %08x: %w", crc, h.crc, ErrBadChecksum)
		}
		return s.onGoaway(h.seq, string(text))
	}
	if crc := frameCRC(hb, nil); crc != h.crc {
		return fmt.Errorf("%v: crc32c %08x, header says %08x: %w", h.typ, crc, h.crc, ErrBadChecksum)
	}
	return s.onControl(ep, c, h)
}

// onPad checks and drops a PAD frame: padding that warms an added data
// connection (warm.go).
func (s *Session) onPad(c *wconn, r io.Reader, hb []byte, h *header) error {
	switch {
	case c.stream == 0:
		return fmt.Errorf("PAD on the control connection: %w", ErrBadFrame)
	case !s.warmable:
		return fmt.Errorf("PAD on conn %d from a peer without %q: %w", c.stream, capWarmup, ErrBadFrame)
	}
	buf := getBuffer(int(h.length))
	defer buf.release()
	if n, err := io.ReadFull(r, buf.b); err != nil {
		return fmt.Errorf("PAD: truncated after %d of %d bytes: %w", n, h.length, err)
	}
	if crc := frameCRC(hb, buf.b); crc != h.crc {
		return fmt.Errorf("PAD (%d bytes): crc32c %08x, header says %08x: %w", h.length, crc, h.crc, ErrBadChecksum)
	}
	return nil
}

func (s *Session) onData(h *header, buf *buffer) error {
	s.mu.Lock()
	in := s.in[h.lane]
	before := in.next
	dup, err := in.accept(h.seq, buf, int(h.length), h.crc)
	advanced := in.next != before
	s.mu.Unlock()
	if err != nil || dup {
		buf.release()
	}
	if err != nil {
		return fmt.Errorf("%s lane: %w", laneName(h.lane), err)
	}
	if advanced {
		kick(in.ready)
	}
	return nil
}

func (s *Session) onControl(ep *epoch, c *wconn, h *header) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch h.typ {
	case frameAck:
		out := s.out[h.lane]
		freed, err := out.ack(h.seq)
		if err != nil {
			return fmt.Errorf("%s lane: %w", laneName(h.lane), err)
		}
		if freed > 0 || h.seq > 0 {
			s.noteDeliveredLocked(freed)
			kick(out.space)
		}
	case frameFin:
		in := s.in[h.lane]
		if err := in.setFin(h.seq); err != nil {
			return fmt.Errorf("%s lane: %w", laneName(h.lane), err)
		}
		kick(in.ready)
	case framePing:
		// Only the control connection answers; on data connections a
		// PING just keeps the connection from looking idle.
		if c.stream == 0 {
			ep.pongWant, ep.pongTS = true, h.seq
			kick(ep.ctlKick)
		}
	case framePong:
		if c.stream == 0 && ep.pingTS != 0 && h.seq == ep.pingTS {
			s.noteRTTLocked(time.Duration(s.monotonic() - h.seq))
			ep.pingTS = 0
		}
	case frameRetire:
		return s.onRetireLocked(ep, c, h.seq)
	}
	return nil
}

func (s *Session) onGoaway(code uint64, text string) error {
	if code == goawayNormal {
		s.fail(fmt.Errorf("%w (%q)", ErrPeerClosed, text), false)
	} else {
		s.fail(fmt.Errorf("%w: %q", ErrPeerAborted, text), false)
	}
	return errStop
}

// noteDeliveredLocked feeds the delivery-rate estimate: payload bytes the
// peer's application consumed, per second, over intervals of at least
// 100 ms, smoothed.
func (s *Session) noteDeliveredLocked(freed int64) {
	now := time.Now()
	if s.st.rateStart.IsZero() {
		s.st.rateStart = now
	}
	s.st.rateBytes += freed
	if el := now.Sub(s.st.rateStart); el >= 100*time.Millisecond {
		sample := float64(s.st.rateBytes) / el.Seconds()
		if s.st.rate == 0 {
			s.st.rate = sample
		} else {
			s.st.rate = 0.75*s.st.rate + 0.25*sample
		}
		s.st.rateBytes, s.st.rateStart = 0, now
	}
}

// noteRTTLocked smooths RTT samples the way TCP does (RFC 6298, gain 1/8).
func (s *Session) noteRTTLocked(rtt time.Duration) {
	s.st.rttLast = rtt
	if s.st.rttMin == 0 || rtt < s.st.rttMin {
		s.st.rttMin = rtt
	}
	if s.st.srtt == 0 {
		s.st.srtt = rtt
	} else {
		s.st.srtt += (rtt - s.st.srtt) / 8
	}
}

// takeLocked hands the next frame of lane to a writer of ep, with a
// reference the writer releases.
func (s *Session) takeLocked(ep *epoch, lane uint8) (*buffer, int, uint64, bool) {
	out := s.out[lane]
	if ep.failed || out.xmit >= out.next {
		return nil, 0, 0, false
	}
	seq := out.xmit
	out.xmit++
	sl := &out.slots[seq%out.win]
	sl.buf.ref()
	if seq <= out.maxXmit {
		s.st.retransMsgs++
		s.st.retransByte += uint64(sl.n)
	} else {
		out.maxXmit = seq
	}
	return sl.buf, sl.n, seq, true
}

func (s *Session) linkError(ep *epoch, err error) {
	s.mu.Lock()
	s.failEpochLocked(ep, err)
	s.mu.Unlock()
}

// dataWriteLoop puts bulk frames on a data connection. The writers of an
// epoch pull from one queue, so a slower connection simply takes fewer
// frames; the receiver restores the order.
func (s *Session) dataWriteLoop(ep *epoch, c *wconn) {
	defer ep.wg.Done()
	t := time.NewTimer(s.cfg.PingInterval)
	defer t.Stop()
	s.mu.Lock()
	warming := c.warming
	s.mu.Unlock()
	if warming && !s.warm(ep, c) {
		return
	}
	last := time.Now()
	var ping [headerSize]byte
	// corked: the socket holds partial segments (setCork) while this
	// writer has frames to write; it is released before the writer
	// waits, and before RETIRE.
	corked, sock := false, rawConn(c.raw.Conn)
	uncork := func() {
		if corked {
			setCork(sock, false)
			corked = false
		}
	}
	for {
		s.mu.Lock()
		if c.retiring {
			s.mu.Unlock()
			uncork()
			s.writeRetire(ep, c)
			return
		}
		buf, n, seq, ok := s.takeLocked(ep, laneBulk)
		more := ok && s.out[laneBulk].xmit < s.out[laneBulk].next
		s.mu.Unlock()
		if ok {
			if more {
				kick(ep.dataKick)
			}
			if !corked {
				corked = setCork(sock, true)
			}
			_, err := c.tls.Write(buf.b[:headerSize+n])
			buf.release()
			if err != nil {
				s.linkError(ep, fmt.Errorf("conn %d (epoch %d): write message %d: %w", c.stream, ep.num, seq, err))
				return
			}
			c.wseq = seq
			if tr := s.trace.Load(); tr != nil {
				tr.wrote(c.stream, seq, n)
			}
			last = time.Now()
			continue
		}
		uncork()
		select {
		case <-ep.dataKick:
		case <-c.kick:
		case <-ep.done:
			return
		case <-t.C:
			if time.Since(last) >= s.cfg.PingInterval {
				h := header{typ: framePing, dir: s.dir, session: s.id, seq: s.monotonic()}
				putHeader(ping[:], &h, 0)
				if _, err := c.tls.Write(ping[:]); err != nil {
					s.linkError(ep, fmt.Errorf("conn %d (epoch %d): write keepalive: %w", c.stream, ep.num, err))
					return
				}
				last = time.Now()
			}
			t.Reset(s.cfg.PingInterval)
		}
	}
}

// ctlWriteLoop writes the control connection: acknowledgements, FINs,
// PING/PONG, priority-lane messages and finally GOAWAY.
func (s *Session) ctlWriteLoop(ep *epoch, c *wconn) {
	defer ep.wg.Done()
	defer close(ep.ctlExit)
	// The first PING goes out at once so the RTT is known early.
	t := time.NewTimer(0)
	defer t.Stop()
	small := make([]byte, 0, 8*headerSize)
	var gbuf []byte
	for {
		s.mu.Lock()
		small = s.ctlFramesLocked(ep, small[:0])
		buf, n, seq, ok := s.takeLocked(ep, lanePriority)
		g := ep.goaway
		ep.goaway = nil
		s.mu.Unlock()
		if len(small) > 0 {
			if _, err := c.tls.Write(small); err != nil {
				if ok {
					buf.release()
				}
				s.linkError(ep, fmt.Errorf("conn 0 (epoch %d): write control: %w", ep.num, err))
				return
			}
		}
		if ok {
			_, err := c.tls.Write(buf.b[:headerSize+n])
			buf.release()
			if err != nil {
				s.linkError(ep, fmt.Errorf("conn 0 (epoch %d): write priority message %d: %w", ep.num, seq, err))
				return
			}
		}
		if g != nil {
			text := g.text
			if len(text) > maxGoawayText {
				text = text[:maxGoawayText]
			}
			gbuf = append(gbuf[:0], make([]byte, headerSize)...)
			gbuf = append(gbuf, text...)
			h := header{typ: frameGoaway, dir: s.dir, session: s.id, seq: g.code, length: uint32(len(text))}
			putHeader(gbuf, &h, crc32Of([]byte(text)))
			c.raw.SetWriteDeadline(time.Now().Add(goawayLinger))
			c.tls.Write(gbuf) // best effort: the session is ending either way
			return
		}
		if len(small) > 0 || ok {
			continue
		}
		select {
		case <-ep.ctlKick:
		case <-ep.done:
			return
		case <-t.C:
			s.mu.Lock()
			ts := s.monotonic()
			ep.pingTS = ts
			s.mu.Unlock()
			h := header{typ: framePing, dir: s.dir, session: s.id, seq: ts}
			var ping [headerSize]byte
			putHeader(ping[:], &h, 0)
			if _, err := c.tls.Write(ping[:]); err != nil {
				s.linkError(ep, fmt.Errorf("conn 0 (epoch %d): write ping: %w", ep.num, err))
				return
			}
			t.Reset(s.cfg.PingInterval)
		}
	}
}

// ctlFramesLocked appends the small control frames that are due.
func (s *Session) ctlFramesLocked(ep *epoch, b []byte) []byte {
	add := func(typ frameType, lane uint8, seq uint64) {
		var f [headerSize]byte
		h := header{typ: typ, dir: s.dir, lane: lane, session: s.id, seq: seq}
		putHeader(f[:], &h, 0)
		b = append(b, f[:]...)
	}
	for lane, in := range s.in {
		if in.consumed > in.ackSent {
			add(frameAck, uint8(lane), in.consumed)
			in.ackSent, in.unacked = in.consumed, 0
		}
	}
	if ep.pongWant {
		add(framePong, 0, ep.pongTS)
		ep.pongWant = false
	}
	for lane, out := range s.out {
		if out.finQueued && !out.finSent {
			add(frameFin, uint8(lane), out.fin)
			out.finSent = true
		}
	}
	return b
}
