package transport

import "errors"

// Sentinel errors callers branch on with errors.Is. Every error the package
// returns names the operation and wraps one of these, a context error, or
// the underlying network or TLS error.
var (
	// ErrClosed: the session (or listener) was closed by this side.
	ErrClosed = errors.New("transport: closed")
	// ErrWriteClosed: Send after CloseWrite.
	ErrWriteClosed = errors.New("transport: write side closed")
	// ErrPeerClosed: the peer closed the session before everything was
	// exchanged. Recv returns io.EOF instead when the peer closed its
	// write side first and every message was delivered.
	ErrPeerClosed = errors.New("transport: peer closed the session")
	// ErrPeerAborted: the peer ended the session because of an error it
	// found; the text the peer sent follows.
	ErrPeerAborted = errors.New("transport: peer aborted the session")
	// ErrLinkDown: the connections stayed broken for longer than the
	// resume window; the session is over on this side (and, by the same
	// clock, on the other).
	ErrLinkDown = errors.New("transport: link down for longer than the resume window")
	// ErrTooLarge: a message over the size limit (the peer's limit for
	// Send, ours for what arrives).
	ErrTooLarge = errors.New("transport: message too large")
	// ErrRefused: the listener refused a connection during the handshake
	// (limits, unknown session, not allowed); the listener's reason follows.
	ErrRefused = errors.New("transport: refused by peer")
	// ErrIncompatible: no protocol version or required capability in
	// common with the peer.
	ErrIncompatible = errors.New("transport: incompatible peer")
	// ErrAuth: certificate or attach-token verification failed, on either
	// side of the connection.
	ErrAuth = errors.New("transport: authentication failed")
	// ErrUnsupported: an operation this side or this peer cannot do
	// (changing the connections from the listening side, or with a peer
	// that lacks the capability).
	ErrUnsupported = errors.New("transport: not supported")

	// ErrProtocol is matched by every violation of the wire protocol
	// below: the peer is broken or hostile, and the session ends.
	ErrProtocol = errors.New("transport: protocol violation")
	// ErrBadChecksum: a frame whose CRC32C does not match.
	ErrBadChecksum = protoErr("bad checksum")
	// ErrWrongSession: a frame carrying another session's id.
	ErrWrongSession = protoErr("wrong session id")
	// ErrOutOfWindow: a sequence number or byte count outside the
	// receive window (far ahead, far behind, or past the end of stream).
	ErrOutOfWindow = protoErr("outside the receive window")
	// ErrReplayMismatch: a sequence number received before, with
	// different content.
	ErrReplayMismatch = protoErr("replayed sequence with different content")
	// ErrBadFrame: a malformed header, unknown type, wrong length for its
	// type, or a control message that contradicts the session state.
	ErrBadFrame = protoErr("malformed frame")
)

// protocolError is a sentinel that also matches ErrProtocol.
type protocolError struct{ msg string }

func protoErr(msg string) error { return &protocolError{msg: "transport: " + msg} }

func (e *protocolError) Error() string        { return e.msg }
func (e *protocolError) Is(target error) bool { return target == ErrProtocol }
