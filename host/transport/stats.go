package transport

import "time"

// Stats is a snapshot of a session's counters.
type Stats struct {
	// Application level: messages and payload bytes, both lanes.
	MessagesSent, MessagesReceived uint64
	BytesSent, BytesReceived       uint64
	// Wire level: bytes read and written on the TCP connections, TLS
	// records and handshakes included.
	WireBytesSent, WireBytesReceived uint64
	// Connections is how many connections the current epoch has (control
	// included); ConnectionsOpened counts every one ever attached.
	Connections       int
	ConnectionsOpened uint64
	// Streams is how many data connections carry frames now (attached to
	// the current epoch, not retiring); StreamsWanted the count asked for
	// (Dial's, then SetStreams'). StreamsAdded and StreamsRetired count
	// the data connections a live epoch gained and lost by such requests;
	// LastResizeError is why the last request ended short ("" if none).
	Streams                      int
	StreamsWanted                int
	StreamsAdded, StreamsRetired uint64
	LastResizeError              string
	// Epoch is the current epoch; Reconnects counts successful resumes,
	// ResumeFailures the attempts that failed.
	Epoch          uint64
	Reconnects     uint64
	ResumeFailures uint64
	// Retransmitted messages and payload bytes: put on a connection again
	// after a resume because the peer had not received them.
	RetransmittedMessages uint64
	RetransmittedBytes    uint64
	// DuplicatesDropped counts exact duplicates the receiver dropped.
	DuplicatesDropped uint64
	// StreamsWarmed counts the added data connections that carried PAD
	// frames before they took frames of the stream, PaddingBytesSent
	// the PAD payload that took (docs/transport.md).
	StreamsWarmed    uint64
	PaddingBytesSent uint64
	// Unacked messages and payload bytes in the bulk send window.
	UnackedMessages uint64
	UnackedBytes    int64
	// RTT is the smoothed round-trip time of PING/PONG on the control
	// connection; RTTMin the smallest sample.
	RTT, RTTMin time.Duration
	// DeliveryRate is payload bytes per second acknowledged by the peer
	// (consumed by its application), smoothed.
	DeliveryRate float64
	// SocketSendBuffer and SocketRecvBuffer are what the kernel reports
	// for a data connection (Linux doubles the requested value, capped
	// by net.core.wmem_max / rmem_max); SocketBufferRequested is what was
	// asked (0: kernel autotuning).
	SocketSendBuffer, SocketRecvBuffer int
	SocketBufferRequested              int
	// LastLinkError is why the last epoch ended ("" if none did).
	LastLinkError string
}

// Stats returns a snapshot of the session's counters.
func (s *Session) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{
		MessagesSent: s.st.msgsSent, MessagesReceived: s.st.msgsRecv,
		BytesSent: s.st.bytesSent, BytesReceived: s.st.bytesRecv,
		WireBytesReceived: s.closedWire[0], WireBytesSent: s.closedWire[1],
		ConnectionsOpened: s.st.connsOpened, Epoch: s.epochNum,
		Reconnects: s.st.reconnects, ResumeFailures: s.st.resumeFails,
		RetransmittedMessages: s.st.retransMsgs, RetransmittedBytes: s.st.retransByte,
		DuplicatesDropped: s.in[laneBulk].dups + s.in[lanePriority].dups,
		UnackedMessages:   s.out[laneBulk].next - 1 - s.out[laneBulk].acked,
		UnackedBytes:      s.out[laneBulk].bytes,
		RTT:               s.st.srtt, RTTMin: s.st.rttMin, DeliveryRate: s.st.rate,
		SocketSendBuffer: s.st.sockSnd, SocketRecvBuffer: s.st.sockRcv, SocketBufferRequested: s.cfg.sockBuf,
		Streams: s.activeStreamsLocked(), StreamsWanted: s.streams, StreamsAdded: s.st.added, StreamsRetired: s.st.retired,
		StreamsWarmed: s.st.warmed, PaddingBytesSent: s.st.padBytes,
	}
	if s.resizeErr != nil {
		st.LastResizeError = s.resizeErr.Error()
	}
	if s.ep != nil {
		if !s.ep.failed {
			st.Connections = len(s.ep.conns)
		}
		for _, c := range s.ep.conns {
			st.WireBytesReceived += c.raw.rd.Load()
			st.WireBytesSent += c.raw.wr.Load()
		}
	}
	if s.lastLink != nil {
		st.LastLinkError = s.lastLink.Error()
	}
	return st
}
