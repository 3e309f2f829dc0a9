package modes

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"
)

// ErrNoTCPInfo: the platform or the connection gives no TCP counters.
var ErrNoTCPInfo = errors.New("no TCP counters")

// ConnLoss is a LossSource over TCP connections: it sums the kernel's
// counters of the connections it tracks. A connection that closes keeps
// the last values read from it, so the sums never go backwards. Track
// connections yourself, or let WrapDial track every connection a dial
// function opens (a transport session's DialConfig.Dial). Safe for
// concurrent use.
type ConnLoss struct {
	mu    sync.Mutex
	conns []*trackedConn
}

type trackedConn struct {
	sc syscall.Conn
	// base is the kernel's counters when the connection was first seen
	// out of its initial slow start; last the latest reading since.
	base, last TCPCounters
	steady     bool
	// send is the latest SendState read.
	send SendState
}

// Track adds connections. Connections that are not TCP sockets (nothing
// implements syscall.Conn) are ignored; a *tls.Conn is unwrapped.
func (l *ConnLoss) Track(conns ...net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range conns {
		if u, ok := c.(interface{ NetConn() net.Conn }); ok {
			c = u.NetConn()
		}
		if sc, ok := c.(syscall.Conn); ok {
			l.conns = append(l.conns, &trackedConn{sc: sc})
		}
	}
}

// WrapDial returns a dial function that tracks every connection dial
// opens. Pass it as transport.DialConfig.Dial (a nil dial means a
// net.Dialer).
func (l *ConnLoss) WrapDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			l.Track(c)
		}
		return c, err
	}
}

// TCPCounters implements LossSource. Each connection counts from the
// first reading that finds it out of TCP's initial slow start: slow start
// ends by overflowing the bottleneck's queue, and those drops are the
// probe's own doing, not the path's loss. Read the counters at least once
// per burst round so that the end of slow start is seen promptly.
func (l *ConnLoss) TCPCounters() (TCPCounters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) == 0 {
		return TCPCounters{}, fmt.Errorf("tcp counters: no connections tracked: %w", ErrNoTCPInfo)
	}
	var sum TCPCounters
	var firstErr error
	read := 0
	for _, c := range l.conns {
		v, slowStart, err := tcpCounters(c.sc)
		if err == nil && v.SegmentsSent > 0 {
			// RTTs count from the first segment, slow start included.
			sum.SRTT = minPositive(sum.SRTT, v.SRTT)
			sum.MinRTT = minPositive(sum.MinRTT, v.MinRTT)
		}
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = err
			}
		case !c.steady && !slowStart:
			c.steady, c.base, c.last = true, v, v
			read++
		case c.steady && v.SegmentsSent >= c.last.SegmentsSent && v.Retransmitted >= c.last.Retransmitted:
			// (A counter never shrinks; a smaller value would be another
			// socket reusing the descriptor.)
			c.last = v
			read++
		default:
			read++
		}
		sum.SegmentsSent += c.last.SegmentsSent - c.base.SegmentsSent
		sum.Retransmitted += c.last.Retransmitted - c.base.Retransmitted
	}
	if read == 0 {
		return sum, fmt.Errorf("tcp counters: %w", firstErr)
	}
	return sum, nil
}

// SendState is the kernel's account of one connection's sending, all
// cumulative since the connection opened: the bytes the peer acknowledged,
// and TCP_INFO's chrono statistics (jiffy resolution: 4 ms at HZ=250).
type SendState struct {
	// Acked is the bytes the peer's kernel acknowledged.
	Acked uint64
	// Busy is the time the connection had data to send; it includes the
	// two limited times below. Time with nothing to send (the application
	// did not write fast enough) is not busy.
	Busy time.Duration
	// ReceiverLimited is busy time in which the peer's receive window
	// stalled the sender: the receiving application did not read fast
	// enough.
	ReceiverLimited time.Duration
	// SendBufferLimited is busy time in which the local send buffer was
	// too small to fill the congestion window.
	SendBufferLimited time.Duration
}

// Network is the busy time in which only the congestion window, that is
// the network, limited the sender.
func (s SendState) Network() time.Duration {
	return max(s.Busy-s.ReceiverLimited-s.SendBufferLimited, 0)
}

// SendStateSource reports SendState per connection, in an order that stays
// the same between calls (new connections are appended). A LossSource may
// implement it; the probe then times the bursts by the kernel's
// acknowledgements too, and tells a round the hosts could not fill the link
// in from one the link limited (ProbeResult.Path.HostBound).
type SendStateSource interface {
	SendStates() ([]SendState, error)
}

// SendStates implements SendStateSource. A connection that cannot be read
// any more keeps its last reading.
func (l *ConnLoss) SendStates() ([]SendState, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) == 0 {
		return nil, fmt.Errorf("send state: no connections tracked: %w", ErrNoTCPInfo)
	}
	out := make([]SendState, len(l.conns))
	var firstErr error
	read := 0
	for i, c := range l.conns {
		v, err := sendState(c.sc)
		switch {
		case err != nil:
			if firstErr == nil {
				firstErr = err
			}
		case v.Acked >= c.send.Acked && v.Busy >= c.send.Busy:
			c.send = v
			read++
		default:
			read++
		}
		out[i] = c.send
	}
	if read == 0 {
		return nil, fmt.Errorf("send state: %w", firstErr)
	}
	return out, nil
}

// minPositive is the smaller of two durations, 0 meaning unknown.
func minPositive(a, b time.Duration) time.Duration {
	switch {
	case a <= 0:
		return max(b, 0)
	case b <= 0:
		return a
	}
	return min(a, b)
}
