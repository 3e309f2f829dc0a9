// Package transport carries DWCP sessions between two hosts: ordered,
// exactly-once, bidirectional streams of messages (the frames of the layer
// above, opaque here) over several TLS 1.3 connections with mutual x509
// authentication, surviving broken connections.
//
// A session has two lanes per direction. The bulk lane (Send/Recv) is
// striped over N data connections and reassembled in order by the
// receiver; the priority lane (SendPriority/RecvPriority) rides the
// control connection, so QEMU's return path and control messages never
// wait behind bulk data. Every message carries the session id, its
// direction and lane, a sequence number, its length and a CRC32C. The
// receiver holds at most one window of messages and acknowledges what its
// application consumed, so a slow consumer is felt by the producer as a
// blocking Send: there is no unbounded buffer anywhere.
//
// The dialer may change the number of data connections while the session
// runs (SetStreams, Resize): new ones attach to the current epoch and take
// frames from the same queue; retired ones stop at a frame boundary and
// say so with a RETIRE frame, which the peer answers before the
// connection closes. Nothing is replayed and the stream does not pause.
//
// When a connection breaks, the whole set of connections (an epoch) is
// torn down and the dialing side builds the next one, proving with an
// HMAC token bound to the session's TLS-exported key and to the new
// connection that it owns the session; both sides exchange what they
// received in order, and the sender replays the rest. A link down for
// longer than the resume window ends the session on both sides with
// ErrLinkDown.
//
// The package owns the wire format, the handshake (proto/dwcp/transport),
// the resume protocol, the flood limits of the listener and the session's
// statistics. It must not interpret messages, hold more than its windows,
// trust anything a peer sends before checking it (a violation ends the
// session with an error matching ErrProtocol; Recv never returns a byte
// that failed a check), or run without TLS. docs/transport.md describes
// the protocol byte by byte.
package transport
