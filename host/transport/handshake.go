package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// Protocol versions this build speaks, and the capabilities of version 1,
// all of which a version-1 peer must have.
var (
	ourVersions = []uint32{1}
	requiredV1  = []string{capCRC32C, capPriorityLane, capResume}
)

const (
	capCRC32C       = "frame-crc32c"
	capPriorityLane = "priority-lane"
	capResume       = "resume-epoch"
	// capResize is optional in version 1: a peer that has it accepts data
	// connections attached to a live epoch beyond the count the session
	// opened with, and RETIRE frames. Without it the count is fixed.
	capResize = "stream-resize"
	// capWarmup is optional in version 1: a peer that has it accepts PAD
	// frames on data connections, which the dialer sends on a connection
	// it adds to a live epoch until the connection carries about as much
	// as the others (docs/transport.md, "What a change costs, and warming").
	capWarmup = "stream-warmup"
)

// TLS exporter labels (RFC 8446 section 7.5). The resume key is exported
// once, from the connection that opened the session; the binding is
// exported from each attaching connection, so a token is only good on the
// connection it was made for.
const (
	labelResumeKey = "EXPORTER-dwcp-v1-resume-key"
	labelBinding   = "EXPORTER-dwcp-v1-attach-binding"
	tokenSize      = sha256.Size
)

func resumeKey(cs tls.ConnectionState, id [idSize]byte) ([]byte, error) {
	k, err := cs.ExportKeyingMaterial(labelResumeKey, id[:], 32)
	if err != nil {
		return nil, fmt.Errorf("export resume key: %w", err)
	}
	return k, nil
}

// attachToken is HMAC-SHA256 under the session's resume key over the
// attach parameters and the attaching connection's own exporter value.
func attachToken(key []byte, cs tls.ConnectionState, id []byte, epoch uint64, stream uint32, counter uint64) ([]byte, error) {
	binding, err := cs.ExportKeyingMaterial(labelBinding, nil, 32)
	if err != nil {
		return nil, fmt.Errorf("export channel binding: %w", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("dwcp attach v1"))
	m.Write(id)
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:8], epoch)
	binary.BigEndian.PutUint32(b[8:12], stream)
	binary.BigEndian.PutUint64(b[12:20], counter)
	m.Write(b[:])
	m.Write(binding)
	return m.Sum(nil), nil
}

// useCounterLocked accepts each attach counter once: counters above the
// highest seen, or within 64 below it and not seen (connections of one
// epoch attach concurrently and may arrive out of order).
func (s *Session) useCounterLocked(c uint64) bool {
	if c > s.ctrMax {
		if sh := c - s.ctrMax; sh >= 64 {
			s.ctrBits = 0
		} else {
			s.ctrBits <<= sh
		}
		s.ctrBits |= 1
		s.ctrMax = c
		return true
	}
	off := s.ctrMax - c
	if off >= 64 || s.ctrBits&(1<<off) != 0 {
		return false
	}
	s.ctrBits |= 1 << off
	return true
}

func ourLimits(e effective) *pb.Limits {
	return &pb.Limits{
		MaxMessage:             uint32(e.MaxMessage),
		WindowMessages:         uint32(e.WindowMessages),
		WindowBytes:            uint64(e.WindowBytes),
		PriorityWindowMessages: priorityWindowMessages,
		PriorityWindowBytes:    priorityWindowBytes,
	}
}

func limitsOf(l *pb.Limits) peerLimits {
	return peerLimits{maxMsg: int(l.GetMaxMessage()), winMsgs: int(l.GetWindowMessages()), winBytes: int64(l.GetWindowBytes()),
		priMsgs: int(l.GetPriorityWindowMessages()), priBytes: int64(l.GetPriorityWindowBytes())}
}

// pickVersion returns the highest version both sides speak and checks that
// the peer has what that version requires.
func pickVersion(theirs []uint32, caps []string) (uint32, *pb.Refusal) {
	best := uint32(0)
	for _, v := range theirs {
		if slices.Contains(ourVersions, v) && v > best {
			best = v
		}
	}
	if best == 0 {
		return 0, &pb.Refusal{Code: pb.RefusalCode_REFUSAL_CODE_INCOMPATIBLE,
			Message: fmt.Sprintf("no common protocol version: peer speaks %v, we speak %v", theirs, ourVersions)}
	}
	for _, r := range requiredV1 {
		if !slices.Contains(caps, r) {
			return 0, &pb.Refusal{Code: pb.RefusalCode_REFUSAL_CODE_MISSING_CAPABILITY,
				Message: fmt.Sprintf("protocol version %d requires capability %q, peer has %v", best, r, caps)}
		}
	}
	return best, nil
}

// refusalError turns a listener's refusal into the dialer's error.
func refusalError(r *pb.Refusal) error {
	var base error
	switch r.GetCode() {
	case pb.RefusalCode_REFUSAL_CODE_INCOMPATIBLE, pb.RefusalCode_REFUSAL_CODE_MISSING_CAPABILITY:
		base = ErrIncompatible
	case pb.RefusalCode_REFUSAL_CODE_AUTH, pb.RefusalCode_REFUSAL_CODE_PEER_NOT_ALLOWED:
		base = ErrAuth
	default:
		base = ErrRefused
	}
	return &refusedError{code: r.GetCode(), msg: r.GetMessage(), base: base}
}

type refusedError struct {
	code pb.RefusalCode
	msg  string
	base error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%v (%s): %q", e.base, e.code, e.msg)
}

func (e *refusedError) Unwrap() []error { return []error{e.base, ErrRefused} }

// classifyTLS marks certificate failures, ours or the peer's, with ErrAuth.
func classifyTLS(err error) error {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var hn x509.HostnameError
	var op *net.OpError
	switch {
	case errors.As(err, &cv), errors.As(err, &ua), errors.As(err, &ci), errors.As(err, &hn):
		return fmt.Errorf("%w: %w", ErrAuth, err)
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		// crypto/tls has no type for it. A dialer whose certificate is
		// not from a CA the listener names sends none at all.
		return fmt.Errorf("%w: %w", ErrAuth, err)
	case errors.As(err, &op) && op.Op == "remote error":
		// The peer's TLS stack sent an alert: in TLS 1.3 that is how a
		// dialer learns the listener rejected its certificate.
		return fmt.Errorf("%w: peer rejected the TLS handshake: %w", ErrAuth, err)
	}
	return err
}

// peerIdentity names the peer by its verified leaf certificate: the first
// DNS SAN, else the first IP SAN, else the CommonName.
func peerIdentity(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return ""
	}
	leaf := cs.PeerCertificates[0]
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0]
	case len(leaf.IPAddresses) > 0:
		return leaf.IPAddresses[0].String()
	}
	return leaf.Subject.CommonName
}

func ourCaps() []string { return append(append([]string(nil), requiredV1...), capResize, capWarmup) }

func hmacEqual(a, b []byte) bool { return hmac.Equal(a, b) }
