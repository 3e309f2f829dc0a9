package modes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// The probe's messages (docs/modes.md, "Probe format"). Every message
// starts with a type byte of 0xF0 or more, so that it cannot be taken for
// a pipeline frame (types 1..8), and a version byte. Integers are
// big-endian.
const (
	msgPing       = 0xF0 // seq u32                           prober -> responder
	msgPong       = 0xF1 // seq u32 (echoed)                  responder -> prober
	msgBurstStart = 0xF2 // round u32, count u32, size u32    prober -> responder
	msgBurstData  = 0xF3 // round u32, index u32, padding     prober -> responder
	msgBurstEnd   = 0xF4 // round u32, sent u32               prober -> responder
	msgReport     = 0xF5 // round u32, n u32, n x (at u64 ns, bytes u32)
	msgDone       = 0xF6 // (empty)                           prober -> responder
	msgError      = 0xF7 // UTF-8 text                        either way
)

// ProbeVersion is the version byte of every probe message.
const ProbeVersion = 1

// FirstProbeType is the smallest type byte of a probe message.
const FirstProbeType = 0xF0

// Limits the responder enforces on what a prober asks of it.
const (
	// MaxBurstMessages bounds one round (and so one report: 12 bytes a
	// message, 48 KiB).
	MaxBurstMessages = 4096
	// MaxBurstMessageSize bounds one burst message.
	MaxBurstMessageSize = 1 << 20
	// minBurstMessageSize is the data message header.
	minBurstMessageSize = 10
	// maxErrorText bounds an error message's text.
	maxErrorText = 1024
)

// ErrProbeProtocol is wrapped by every error about a malformed or
// unexpected probe message.
var ErrProbeProtocol = errors.New("probe protocol violation")

// IsProbeMessage reports whether msg is a probe message (not a pipeline
// frame).
func IsProbeMessage(msg []byte) bool { return len(msg) > 0 && msg[0] >= FirstProbeType }

func probeName(t byte) string {
	switch t {
	case msgPing:
		return "ping"
	case msgPong:
		return "pong"
	case msgBurstStart:
		return "burst-start"
	case msgBurstData:
		return "burst-data"
	case msgBurstEnd:
		return "burst-end"
	case msgReport:
		return "report"
	case msgDone:
		return "done"
	case msgError:
		return "error"
	}
	return fmt.Sprintf("type(%#x)", t)
}

// probeMsg is a decoded probe message. Body fields are set by type.
type probeMsg struct {
	typ          byte
	seq          uint32 // ping, pong
	round        uint32 // burst-*, report
	count, size  uint32 // burst-start
	index        uint32 // burst-data
	sent         uint32 // burst-end
	samples      []sample
	text         string // error
	dataMsgBytes int    // burst-data: whole message length
}

// sample is one burst message's arrival at the responder: nanoseconds
// after the round's first data message arrived, and its length.
type sample struct {
	at    uint64
	bytes uint32
}

func appendHeader(dst []byte, t byte) []byte { return append(dst, t, ProbeVersion) }

func appendPing(dst []byte, t byte, seq uint32) []byte {
	return binary.BigEndian.AppendUint32(appendHeader(dst, t), seq)
}

func appendBurstStart(dst []byte, round, count, size uint32) []byte {
	dst = binary.BigEndian.AppendUint32(appendHeader(dst, msgBurstStart), round)
	dst = binary.BigEndian.AppendUint32(dst, count)
	return binary.BigEndian.AppendUint32(dst, size)
}

// fillBurstData writes the header of a data message into msg (len(msg) is
// the message size, at least minBurstMessageSize). The padding is left
// as it is: it carries nothing.
func fillBurstData(msg []byte, round, index uint32) {
	msg[0], msg[1] = msgBurstData, ProbeVersion
	binary.BigEndian.PutUint32(msg[2:], round)
	binary.BigEndian.PutUint32(msg[6:], index)
}

func appendBurstEnd(dst []byte, round, sent uint32) []byte {
	dst = binary.BigEndian.AppendUint32(appendHeader(dst, msgBurstEnd), round)
	return binary.BigEndian.AppendUint32(dst, sent)
}

func appendReport(dst []byte, round uint32, s []sample) []byte {
	dst = binary.BigEndian.AppendUint32(appendHeader(dst, msgReport), round)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	for _, x := range s {
		dst = binary.BigEndian.AppendUint64(dst, x.at)
		dst = binary.BigEndian.AppendUint32(dst, x.bytes)
	}
	return dst
}

func appendError(dst []byte, text string) []byte {
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	for !utf8.ValidString(text) {
		text = text[:len(text)-1]
	}
	return append(appendHeader(dst, msgError), text...)
}

// parseProbe decodes and checks one probe message. samples reuses buf's
// storage for a report.
func parseProbe(msg []byte, buf []sample) (probeMsg, error) {
	var m probeMsg
	if len(msg) < 2 {
		return m, fmt.Errorf("probe message of %d bytes: %w", len(msg), ErrProbeProtocol)
	}
	m.typ = msg[0]
	if m.typ < FirstProbeType {
		return m, fmt.Errorf("probe message type %#x is a pipeline frame type: %w", m.typ, ErrProbeProtocol)
	}
	if msg[1] != ProbeVersion {
		return m, fmt.Errorf("probe %s message version %d, want %d: %w", probeName(m.typ), msg[1], ProbeVersion, ErrProbeProtocol)
	}
	body := msg[2:]
	need := func(n int) error {
		if len(body) != n {
			return fmt.Errorf("probe %s message body of %d bytes, want %d: %w", probeName(m.typ), len(body), n, ErrProbeProtocol)
		}
		return nil
	}
	u32 := func(i int) uint32 { return binary.BigEndian.Uint32(body[4*i:]) }
	switch m.typ {
	case msgPing, msgPong:
		if err := need(4); err != nil {
			return m, err
		}
		m.seq = u32(0)
	case msgBurstStart:
		if err := need(12); err != nil {
			return m, err
		}
		m.round, m.count, m.size = u32(0), u32(1), u32(2)
		if m.count == 0 || m.count > MaxBurstMessages || m.size < minBurstMessageSize || m.size > MaxBurstMessageSize {
			return m, fmt.Errorf("probe burst of %d messages of %d bytes: limits are 1..%d messages of %d..%d bytes: %w",
				m.count, m.size, MaxBurstMessages, minBurstMessageSize, MaxBurstMessageSize, ErrProbeProtocol)
		}
	case msgBurstData:
		if len(body) < 8 {
			return m, fmt.Errorf("probe burst-data message of %d bytes: %w", len(msg), ErrProbeProtocol)
		}
		m.round, m.index, m.dataMsgBytes = u32(0), u32(1), len(msg)
	case msgBurstEnd:
		if err := need(8); err != nil {
			return m, err
		}
		m.round, m.sent = u32(0), u32(1)
	case msgReport:
		if len(body) < 8 {
			return m, fmt.Errorf("probe report of %d bytes: %w", len(msg), ErrProbeProtocol)
		}
		m.round = u32(0)
		n := u32(1)
		if n > MaxBurstMessages {
			return m, fmt.Errorf("probe report of %d samples (limit %d): %w", n, MaxBurstMessages, ErrProbeProtocol)
		}
		if err := need(8 + 12*int(n)); err != nil {
			return m, err
		}
		s := buf[:0]
		prev := uint64(0)
		for i := range int(n) {
			p := body[8+12*i:]
			x := sample{at: binary.BigEndian.Uint64(p), bytes: binary.BigEndian.Uint32(p[8:])}
			if x.at < prev || x.at > uint64(time.Hour) || x.bytes > MaxBurstMessageSize {
				return m, fmt.Errorf("probe report sample %d (%d ns, %d bytes) out of order or range: %w", i, x.at, x.bytes, ErrProbeProtocol)
			}
			prev = x.at
			s = append(s, x)
		}
		m.samples = s
	case msgDone:
		if err := need(0); err != nil {
			return m, err
		}
	case msgError:
		if len(body) > maxErrorText || !utf8.Valid(body) {
			return m, fmt.Errorf("probe error message of %d bytes, not short UTF-8: %w", len(body), ErrProbeProtocol)
		}
		m.text = string(body)
	default:
		return m, fmt.Errorf("unknown probe message type %#x: %w", m.typ, ErrProbeProtocol)
	}
	return m, nil
}
