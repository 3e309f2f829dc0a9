package transport

import (
	"fmt"
	"hash/crc32"
	"net"
	"time"
)

// Warming a data connection added to a live epoch (docs/transport.md,
// "Warming an added connection").
//
// A new connection starts in TCP's slow start, and on a busy path it
// takes its share of the bottleneck only after many round trips (the
// other connections hold the queue): measured on the lab's 60 ms path,
// 0.1-0.3 MB/s for the first second against 3 MB/s for each established
// connection. A frame of the stream it takes then reaches the receiver up
// to a second after the frames that followed it on the others, and the
// receiver's in-order delivery waits for it. So the dialer's writer of an
// added connection sends PAD frames, which the receiver checks and drops,
// until the kernel says the connection delivers at least warmShare of the
// established connections' mean rate; only then does it take frames.
// Sequence numbers are untouched: PAD carries none and is never delivered.

const (
	// warmShare is the delivery rate, against the mean of the established
	// connections, at which an added connection starts taking frames: its
	// frames then take at most about twice as long to arrive as theirs.
	warmShare = 0.5
	// padSize is the payload of one PAD frame; the rates are checked
	// between PAD frames.
	padSize = 16 << 10
	// warmRTTs bounds the warming, in round trips, within warmMin and
	// warmMax: a connection that cannot catch up (a path where a new
	// flow never gets its share) joins anyway.
	warmRTTs = 20
	warmMin  = 500 * time.Millisecond
	warmMax  = 5 * time.Second
	// notsentLowat bounds the bytes a data connection's socket holds that
	// TCP has not sent yet. Without it the kernel's autotuned send buffer
	// takes whatever the session's window holds (seconds of the path on
	// the lab's 60 ms link), a frame is bound to a connection long before
	// that connection can send it, and any change in the connections'
	// shares of the path (a connection added, retired, or just losing a
	// packet) reorders deliveries by that much. With it, a writer takes
	// its next frame only when its connection is about to send it.
	notsentLowat = 128 << 10
)

// warmLimit is how long an added connection may warm on a path of this
// round-trip time (0: not known yet).
func warmLimit(rtt time.Duration) time.Duration {
	return min(max(warmRTTs*rtt, warmMin), warmMax)
}

// warm writes PAD frames on c until c delivers about as much as the
// established data connections, or warming is pointless (nothing in
// flight, c retiring, no established connection) or took too long. It
// returns false when c's writer must end (the epoch ended, or a write
// failed and ended it).
func (s *Session) warm(ep *epoch, c *wconn) bool {
	frame := make([]byte, headerSize+padSize) // zeros: nothing of any session's data
	h := header{typ: framePad, dir: s.dir, session: s.id, length: padSize}
	putHeader(frame, &h, crc32.Checksum(frame[headerSize:], castagnoli))
	s.mu.Lock()
	limit := warmLimit(s.st.srtt)
	s.mu.Unlock()
	start := time.Now()
	var peers []net.Conn
	var sent uint64
	defer func() {
		s.mu.Lock()
		c.warming = false
		s.st.padBytes += sent
		if sent > 0 {
			s.st.warmed++
		}
		s.mu.Unlock()
		// Frames queued meanwhile are there for c too now.
		kick(ep.dataKick)
	}()
	for {
		s.mu.Lock()
		out := s.out[laneBulk]
		idle := out.acked+1 >= out.next
		stop := c.retiring || ep.failed || idle
		peers = peers[:0]
		for _, o := range ep.conns {
			if o != c && o.stream > 0 && !o.retiring && !o.warming {
				peers = append(peers, o.raw.Conn)
			}
		}
		s.mu.Unlock()
		if ep.failedNow() {
			return false
		}
		if stop || len(peers) == 0 || time.Since(start) >= limit || caughtUp(c.raw.Conn, peers) {
			return true
		}
		if _, err := c.tls.Write(frame); err != nil {
			s.linkError(ep, fmt.Errorf("conn %d (epoch %d): write padding: %w", c.stream, ep.num, err))
			return false
		}
		sent += padSize
	}
}

// failedNow reports whether the epoch has ended.
func (ep *epoch) failedNow() bool {
	select {
	case <-ep.done:
		return true
	default:
		return false
	}
}

// caughtUp reports whether c delivers at least warmShare of the mean rate
// of peers, as the kernel measures them. An unreadable peer is left out;
// when none can be read, c has nothing to catch up with.
func caughtUp(c net.Conn, peers []net.Conn) bool {
	mine, ok := readTCPState(c)
	if !ok {
		return true
	}
	var sum float64
	n := 0
	for _, p := range peers {
		if st, ok := readTCPState(p); ok {
			sum += st.rate
			n++
		}
	}
	return n == 0 || mine.rate >= warmShare*sum/float64(n)
}
