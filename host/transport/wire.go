package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"google.golang.org/protobuf/proto"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

// Frame header layout (docs/transport.md has the full description):
//
//	0     marker 0xD7
//	1     type
//	2     flags: bit 0 direction (1 = listener to dialer), bit 1 lane
//	      (1 = priority); other bits zero
//	3     reserved, zero
//	4:20  session id
//	20:28 sequence number (DATA, ACK, FIN; RETIRE: the last DATA sent
//	      on this connection), timestamp (PING, PONG), code (GOAWAY) or
//	      zero (PAD), big endian
//	28:32 payload length, big endian
//	32:36 CRC32C (Castagnoli) of the payload followed by bytes 0:32
const (
	headerSize  = 36
	frameMarker = 0xD7
	idSize      = 16

	flagDir  = 1 << 0
	flagLane = 1 << 1

	// maxGoawayText bounds the reason a peer may send with GOAWAY.
	maxGoawayText = 1024
)

type frameType uint8

const (
	frameData   frameType = 1
	frameAck    frameType = 2
	framePing   frameType = 3
	framePong   frameType = 4
	frameFin    frameType = 5
	frameGoaway frameType = 6
	// frameRetire ends a data connection's part in the session: the
	// sender puts nothing more on it (docs/transport.md, "Changing the
	// number of data connections").
	frameRetire frameType = 7
	// framePad is padding on a data connection added to a live epoch: it
	// opens the connection's congestion window before the connection
	// takes frames of the stream; the receiver checks and drops it.
	framePad frameType = 8
)

// maxPadding bounds the payload of a PAD frame.
const maxPadding = 64 << 10

func (t frameType) String() string {
	switch t {
	case frameData:
		return "DATA"
	case frameAck:
		return "ACK"
	case framePing:
		return "PING"
	case framePong:
		return "PONG"
	case frameFin:
		return "FIN"
	case frameGoaway:
		return "GOAWAY"
	case frameRetire:
		return "RETIRE"
	case framePad:
		return "PAD"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// GOAWAY codes.
const (
	goawayNormal uint64 = 0
	goawayError  uint64 = 1
)

// Lanes. The bulk lane is striped over the data connections; the priority
// lane rides the control connection so that small messages never wait
// behind bulk data in a socket buffer.
const (
	laneBulk     = 0
	lanePriority = 1
	numLanes     = 2
)

// Directions, as seen on the wire.
const (
	dirFromDialer   = 0
	dirFromListener = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is a decoded frame header.
type header struct {
	typ     frameType
	dir     uint8
	lane    uint8
	session [idSize]byte
	seq     uint64
	length  uint32
	crc     uint32
}

// putHeader writes h into b[:headerSize] with the CRC computed from
// payloadCRC (the CRC32C of the payload alone), so that a sender can
// checksum a large payload before it knows the sequence number.
func putHeader(b []byte, h *header, payloadCRC uint32) {
	_ = b[headerSize-1]
	b[0] = frameMarker
	b[1] = byte(h.typ)
	b[2] = h.dir&1 | (h.lane&1)<<1
	b[3] = 0
	copy(b[4:20], h.session[:])
	binary.BigEndian.PutUint64(b[20:28], h.seq)
	binary.BigEndian.PutUint32(b[28:32], h.length)
	h.crc = crc32.Update(payloadCRC, castagnoli, b[:32])
	binary.BigEndian.PutUint32(b[32:36], h.crc)
}

// parseHeader decodes and checks the fixed fields of a frame header. It
// checks what the header alone can tell; the session checks ids, windows
// and lengths against its state, and the CRC once the payload is in.
func parseHeader(b []byte, h *header) error {
	if len(b) < headerSize {
		return fmt.Errorf("frame header: %d of %d bytes: %w", len(b), headerSize, ErrBadFrame)
	}
	if b[0] != frameMarker {
		return fmt.Errorf("frame header: marker %#02x, want %#02x: %w", b[0], frameMarker, ErrBadFrame)
	}
	h.typ = frameType(b[1])
	if h.typ < frameData || h.typ > framePad {
		return fmt.Errorf("frame header: unknown %v: %w", h.typ, ErrBadFrame)
	}
	if b[2]&^(flagDir|flagLane) != 0 || b[3] != 0 {
		return fmt.Errorf("frame header: reserved bits set (flags %#02x, reserved %#02x): %w", b[2], b[3], ErrBadFrame)
	}
	h.dir = b[2] & flagDir
	h.lane = (b[2] & flagLane) >> 1
	copy(h.session[:], b[4:20])
	h.seq = binary.BigEndian.Uint64(b[20:28])
	h.length = binary.BigEndian.Uint32(b[28:32])
	h.crc = binary.BigEndian.Uint32(b[32:36])
	switch h.typ {
	case frameAck, framePing, framePong, frameFin, frameRetire:
		if h.length != 0 {
			return fmt.Errorf("frame header: %v with length %d, want 0: %w", h.typ, h.length, ErrBadFrame)
		}
	case frameGoaway:
		if h.length > maxGoawayText {
			return fmt.Errorf("frame header: GOAWAY reason of %d bytes, limit %d: %w", h.length, maxGoawayText, ErrTooLarge)
		}
	case framePad:
		if h.length > maxPadding {
			return fmt.Errorf("frame header: PAD of %d bytes, limit %d: %w", h.length, maxPadding, ErrTooLarge)
		}
	}
	if h.typ != frameData && h.typ != frameAck && h.typ != frameFin && h.lane != 0 {
		return fmt.Errorf("frame header: %v with lane bit set: %w", h.typ, ErrBadFrame)
	}
	return nil
}

// frameCRC is the checksum a frame with this header bytes and payload must
// carry.
func frameCRC(hdr, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(payload, castagnoli), castagnoli, hdr[:32])
}

// Handshake messages travel as "DWCP", a big-endian uint32 length, and the
// protobuf encoding.
var handshakeMagic = [4]byte{'D', 'W', 'C', 'P'}

// maxHandshakeMsg bounds a Hello or Welcome; real ones are under 200 bytes.
const maxHandshakeMsg = 16 << 10

func writeHandshake(w io.Writer, m proto.Message) error {
	body, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode handshake: %w", err)
	}
	if len(body) > maxHandshakeMsg {
		return fmt.Errorf("encode handshake: %d bytes, limit %d: %w", len(body), maxHandshakeMsg, ErrTooLarge)
	}
	buf := make([]byte, 8+len(body))
	copy(buf, handshakeMagic[:])
	binary.BigEndian.PutUint32(buf[4:8], uint32(len(body)))
	copy(buf[8:], body)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write handshake: %w", err)
	}
	return nil
}

// errBadHandshake marks handshake bytes that are not a DWCP handshake.
var errBadHandshake = errors.New("malformed handshake")

// readHandshakeBody reads one framed handshake message.
func readHandshakeBody(r io.Reader) ([]byte, error) {
	var pre [8]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return nil, fmt.Errorf("read handshake: %w", err)
	}
	if [4]byte(pre[:4]) != handshakeMagic {
		return nil, fmt.Errorf("read handshake: magic %q, want %q: %w", pre[:4], handshakeMagic[:], errBadHandshake)
	}
	n := binary.BigEndian.Uint32(pre[4:8])
	if n > maxHandshakeMsg {
		return nil, fmt.Errorf("read handshake: %d bytes, limit %d: %w", n, maxHandshakeMsg, errBadHandshake)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("read handshake body: %w", err)
	}
	return body, nil
}

// Hard limits that a peer's advertised Limits must respect: they bound
// what this side will ever buffer on a peer's say-so.
const (
	hardMaxMessage    = 64 << 20
	hardMaxWindowMsgs = 1 << 16
	hardMaxWindowByte = 1 << 30
	hardMaxStreams    = 64
	maxCapabilities   = 64
	maxCapabilityLen  = 64
)

// decodeHello parses and validates a Hello.
func decodeHello(body []byte) (*pb.Hello, error) {
	var h pb.Hello
	if err := proto.Unmarshal(body, &h); err != nil {
		return nil, fmt.Errorf("decode hello: %w: %w", errBadHandshake, err)
	}
	if err := checkVersionsCaps(h.GetVersions(), h.GetCapabilities()); err != nil {
		return nil, fmt.Errorf("decode hello: %w", err)
	}
	switch p := h.GetPurpose().(type) {
	case *pb.Hello_Open:
		if p.Open == nil {
			return nil, fmt.Errorf("decode hello: empty open: %w", errBadHandshake)
		}
		if s := p.Open.GetStreams(); s < 1 || s > hardMaxStreams {
			return nil, fmt.Errorf("decode hello: %d streams, want 1..%d: %w", s, hardMaxStreams, errBadHandshake)
		}
		if err := checkLimits(p.Open.GetLimits()); err != nil {
			return nil, fmt.Errorf("decode hello: %w", err)
		}
	case *pb.Hello_Attach:
		a := p.Attach
		if a == nil {
			return nil, fmt.Errorf("decode hello: empty attach: %w", errBadHandshake)
		}
		if len(a.GetSessionId()) != idSize {
			return nil, fmt.Errorf("decode hello: session id of %d bytes, want %d: %w", len(a.GetSessionId()), idSize, errBadHandshake)
		}
		if len(a.GetToken()) != tokenSize {
			return nil, fmt.Errorf("decode hello: token of %d bytes, want %d: %w", len(a.GetToken()), tokenSize, errBadHandshake)
		}
		if a.GetStream() > hardMaxStreams || a.GetEpoch() == 0 {
			return nil, fmt.Errorf("decode hello: stream %d epoch %d out of range: %w", a.GetStream(), a.GetEpoch(), errBadHandshake)
		}
		want := 0
		if a.GetStream() == 0 {
			want = numLanes
		}
		if len(a.GetReceived()) != want {
			return nil, fmt.Errorf("decode hello: %d received marks on stream %d, want %d: %w", len(a.GetReceived()), a.GetStream(), want, errBadHandshake)
		}
	default:
		return nil, fmt.Errorf("decode hello: neither open nor attach: %w", errBadHandshake)
	}
	return &h, nil
}

// decodeWelcome parses and validates a Welcome. A refusal is returned as a
// valid message; the caller turns it into an error.
func decodeWelcome(body []byte) (*pb.Welcome, error) {
	var w pb.Welcome
	if err := proto.Unmarshal(body, &w); err != nil {
		return nil, fmt.Errorf("decode welcome: %w: %w", errBadHandshake, err)
	}
	if w.GetRefusal() != nil {
		if len(w.GetRefusal().GetMessage()) > maxGoawayText {
			return nil, fmt.Errorf("decode welcome: refusal text of %d bytes: %w", len(w.GetRefusal().GetMessage()), errBadHandshake)
		}
		return &w, nil
	}
	if err := checkVersionsCaps([]uint32{w.GetVersion()}, w.GetCapabilities()); err != nil {
		return nil, fmt.Errorf("decode welcome: %w", err)
	}
	if len(w.GetSessionId()) != idSize {
		return nil, fmt.Errorf("decode welcome: session id of %d bytes, want %d: %w", len(w.GetSessionId()), idSize, errBadHandshake)
	}
	if w.GetLimits() != nil {
		if err := checkLimits(w.GetLimits()); err != nil {
			return nil, fmt.Errorf("decode welcome: %w", err)
		}
	}
	if n := len(w.GetReceived()); n != 0 && n != numLanes {
		return nil, fmt.Errorf("decode welcome: %d received marks, want %d: %w", n, numLanes, errBadHandshake)
	}
	return &w, nil
}

func checkVersionsCaps(versions []uint32, caps []string) error {
	if len(versions) == 0 || len(versions) > 16 {
		return fmt.Errorf("%d protocol versions: %w", len(versions), errBadHandshake)
	}
	if len(caps) > maxCapabilities {
		return fmt.Errorf("%d capabilities, limit %d: %w", len(caps), maxCapabilities, errBadHandshake)
	}
	for _, c := range caps {
		if len(c) == 0 || len(c) > maxCapabilityLen {
			return fmt.Errorf("capability of %d bytes: %w", len(c), errBadHandshake)
		}
	}
	return nil
}

func checkLimits(l *pb.Limits) error {
	if l == nil {
		return fmt.Errorf("no limits: %w", errBadHandshake)
	}
	switch {
	case l.GetMaxMessage() == 0 || l.GetMaxMessage() > hardMaxMessage,
		l.GetWindowMessages() == 0 || l.GetWindowMessages() > hardMaxWindowMsgs,
		l.GetWindowBytes() < uint64(l.GetMaxMessage()) || l.GetWindowBytes() > hardMaxWindowByte,
		l.GetPriorityWindowMessages() == 0 || l.GetPriorityWindowMessages() > hardMaxWindowMsgs,
		l.GetPriorityWindowBytes() == 0 || l.GetPriorityWindowBytes() > hardMaxWindowByte:
		return fmt.Errorf("limits out of range (max message %d, window %d msgs / %d B, priority %d msgs / %d B): %w",
			l.GetMaxMessage(), l.GetWindowMessages(), l.GetWindowBytes(), l.GetPriorityWindowMessages(), l.GetPriorityWindowBytes(), errBadHandshake)
	}
	return nil
}

func crc32Of(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
