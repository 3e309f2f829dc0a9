package transport

import "fmt"

// outSlot holds one sent, not yet acknowledged message: its whole frame
// (header and payload) ready to be written again after a resume.
type outSlot struct {
	buf *buffer
	n   int
}

// sendLane is the sending half of one lane. All fields are guarded by
// Session.mu. Sequence numbers start at 1; slots are indexed by seq modulo
// the window, which holds because at most win messages are unacknowledged.
type sendLane struct {
	lane     uint8
	slots    []outSlot
	win      uint64 // messages
	winBytes int64
	maxMsg   int
	next     uint64 // next sequence number to assign
	acked    uint64 // highest sequence number the peer acknowledged
	xmit     uint64 // next sequence number to put on a connection this epoch
	maxXmit  uint64 // highest sequence number ever put on a connection
	bytes    int64  // unacknowledged payload bytes
	// limit, when positive, is this side's own cap on unacknowledged
	// bytes below the peer's window (Session.SetSendWindow).
	limit int64

	finQueued bool
	fin       uint64
	finSent   bool // FIN written in the current epoch

	space chan struct{} // capacity 1: window space may have opened
}

func newSendLane(lane uint8, win uint64, winBytes int64, maxMsg int) *sendLane {
	return &sendLane{lane: lane, slots: make([]outSlot, win), win: win, winBytes: winBytes,
		maxMsg: maxMsg, next: 1, xmit: 1, space: make(chan struct{}, 1)}
}

// fits reports whether a message of n bytes may be sent now. The peer's
// window is a hard limit; the local cap always lets one message through.
func (l *sendLane) fits(n int) bool {
	if l.next-1-l.acked >= l.win || l.bytes+int64(n) > l.winBytes {
		return false
	}
	return l.limit <= 0 || l.bytes == 0 || l.bytes+int64(n) <= l.limit
}

// ack frees everything up to and including seq and returns the payload
// bytes freed.
func (l *sendLane) ack(seq uint64) (int64, error) {
	if seq >= l.next {
		return 0, fmt.Errorf("ack of message %d, last sent is %d: %w", seq, l.next-1, ErrBadFrame)
	}
	if seq < l.acked {
		return 0, fmt.Errorf("ack of message %d after ack of %d (acks only grow): %w", seq, l.acked, ErrBadFrame)
	}
	var freed int64
	for s := l.acked + 1; s <= seq; s++ {
		sl := &l.slots[s%l.win]
		freed += int64(sl.n)
		sl.buf.release()
		*sl = outSlot{}
	}
	l.bytes -= freed
	l.acked = seq
	if l.xmit <= seq {
		l.xmit = seq + 1
	}
	return freed, nil
}

// resumeFrom positions the lane for a new epoch in which the peer has
// received everything up to and including received.
func (l *sendLane) resumeFrom(received uint64) error {
	if received < l.acked || received >= l.next {
		return fmt.Errorf("peer reports lane %d received through %d, but we sent through %d and it acknowledged %d: %w",
			l.lane, received, l.next-1, l.acked, ErrBadFrame)
	}
	l.xmit = received + 1
	l.finSent = false
	return nil
}

func (l *sendLane) releaseAll() {
	for s := l.acked + 1; s < l.next; s++ {
		sl := &l.slots[s%l.win]
		if sl.buf != nil {
			sl.buf.release()
		}
		*sl = outSlot{}
	}
	l.acked = l.next - 1
	l.bytes = 0
}

// inSlot holds a received message not yet taken by the application.
type inSlot struct {
	buf *buffer
	seq uint64
	n   int
	crc uint32
}

// fingerprint remembers a delivered message well enough to tell an exact
// replay (dropped) from a replay with other content (refused).
type fingerprint struct {
	seq uint64
	crc uint32
	n   uint32
}

// recvLane is the receiving half of one lane, guarded by Session.mu. It
// holds at most win messages and winBytes payload bytes, counted from the
// last message the application consumed: exactly what the peer's sender
// may have unacknowledged, so a reader never has to stop reading and
// control frames never wait behind data.
type recvLane struct {
	lane     uint8
	slots    []inSlot
	fps      []fingerprint
	win      uint64
	winBytes int64
	maxMsg   int
	next     uint64 // lowest sequence number not yet received in order
	consumed uint64 // highest sequence number the application took
	ackSent  uint64 // highest sequence number acknowledged to the peer
	unacked  int64  // bytes consumed since the last ACK
	held     int64  // payload bytes in slots
	fin      uint64
	finSet   bool
	dups     uint64

	ready chan struct{} // capacity 1: a message or EOF may be available
}

func newRecvLane(lane uint8, win uint64, winBytes int64, maxMsg int) *recvLane {
	return &recvLane{lane: lane, slots: make([]inSlot, win), fps: make([]fingerprint, win),
		win: win, winBytes: winBytes, maxMsg: maxMsg, next: 1, ready: make(chan struct{}, 1)}
}

// accept files a verified message. dup is true for an exact duplicate,
// which the caller drops; err is a protocol violation.
func (l *recvLane) accept(seq uint64, buf *buffer, n int, crc uint32) (dup bool, err error) {
	switch {
	case seq == 0:
		return false, fmt.Errorf("message with sequence number 0: %w", ErrBadFrame)
	case l.finSet && seq > l.fin:
		return false, fmt.Errorf("message %d after end of stream at %d: %w", seq, l.fin, ErrOutOfWindow)
	case seq <= l.consumed:
		if l.consumed-seq >= l.win {
			return false, fmt.Errorf("message %d is behind the window (delivered through %d, window %d): %w", seq, l.consumed, l.win, ErrOutOfWindow)
		}
		fp := l.fps[seq%l.win]
		if fp.seq == seq && fp.crc == crc && fp.n == uint32(n) {
			l.dups++
			return true, nil
		}
		return false, fmt.Errorf("message %d was delivered with %d bytes (crc %08x), replay has %d bytes (crc %08x): %w",
			seq, fp.n, fp.crc, n, crc, ErrReplayMismatch)
	case seq-l.consumed > l.win:
		return false, fmt.Errorf("message %d is ahead of the window (delivered through %d, window %d messages): %w", seq, l.consumed, l.win, ErrOutOfWindow)
	}
	sl := &l.slots[seq%l.win]
	if sl.buf != nil {
		if sl.seq == seq && sl.crc == crc && sl.n == n {
			l.dups++
			return true, nil
		}
		return false, fmt.Errorf("message %d was received with %d bytes (crc %08x), replay has %d bytes (crc %08x): %w",
			seq, sl.n, sl.crc, n, crc, ErrReplayMismatch)
	}
	if l.held+int64(n) > l.winBytes {
		return false, fmt.Errorf("message %d of %d bytes overflows the window (%d of %d bytes held): %w", seq, n, l.held, l.winBytes, ErrOutOfWindow)
	}
	*sl = inSlot{buf: buf, seq: seq, n: n, crc: crc}
	l.held += int64(n)
	for l.slots[l.next%l.win].buf != nil && l.slots[l.next%l.win].seq == l.next {
		l.next++
	}
	return false, nil
}

// take removes the next in-order message, or returns nil.
func (l *recvLane) take() (*buffer, int) {
	if l.consumed+1 >= l.next {
		return nil, 0
	}
	seq := l.consumed + 1
	sl := &l.slots[seq%l.win]
	buf, n := sl.buf, sl.n
	l.fps[seq%l.win] = fingerprint{seq: seq, crc: sl.crc, n: uint32(n)}
	*sl = inSlot{}
	l.consumed = seq
	l.held -= int64(n)
	l.unacked += int64(n)
	return buf, n
}

// ackDue says whether the consumer has taken enough that the peer should
// hear of it now: a quarter of the window, or everything received so far
// (the application is waiting, so the sender may be too).
func (l *recvLane) ackDue() bool {
	if l.consumed == l.ackSent {
		return false
	}
	return l.consumed+1 >= l.next || (l.consumed-l.ackSent)*4 >= l.win || l.unacked*4 >= l.winBytes || l.unacked >= ackEveryBytes
}

// ackEveryBytes bounds the consumed bytes an ack waits for, so that a
// sender that caps itself far below the window (SetSendWindow) still hears
// of progress often enough to keep the path full.
const ackEveryBytes = 256 << 10

// setFin records the peer's end of stream.
func (l *recvLane) setFin(seq uint64) error {
	switch {
	case l.finSet && l.fin != seq:
		return fmt.Errorf("end of stream moved from %d to %d: %w", l.fin, seq, ErrBadFrame)
	case seq+1 < l.next:
		return fmt.Errorf("end of stream at %d but %d already received: %w", seq, l.next-1, ErrBadFrame)
	case seq > l.consumed+l.win:
		return fmt.Errorf("end of stream at %d is ahead of the window: %w", seq, ErrOutOfWindow)
	}
	for s := seq + 1; s <= l.consumed+l.win; s++ {
		if sl := l.slots[s%l.win]; sl.buf != nil && sl.seq == s {
			return fmt.Errorf("end of stream at %d but message %d already received: %w", seq, s, ErrBadFrame)
		}
	}
	l.fin, l.finSet = seq, true
	return nil
}

// releaseAll drops every held message; the lane then holds nothing and
// delivers nothing more.
func (l *recvLane) releaseAll() {
	for i := range l.slots {
		if l.slots[i].buf != nil {
			l.slots[i].buf.release()
		}
		l.slots[i] = inSlot{}
	}
	l.held = 0
	l.next = l.consumed + 1
}
