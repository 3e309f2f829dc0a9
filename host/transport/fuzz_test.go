package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/dwcp/dwcp/host/internal/pb/transportv1"
)

var fuzzID = [idSize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func fuzzFrame(typ frameType, lane uint8, seq uint64, payload []byte) []byte {
	b := make([]byte, headerSize+len(payload))
	copy(b[headerSize:], payload)
	h := header{typ: typ, dir: dirFromDialer, lane: lane, session: fuzzID, seq: seq, length: uint32(len(payload))}
	putHeader(b, &h, crc32Of(payload))
	return b
}

// FuzzParseHeader: any 36 bytes either fail with ErrBadFrame/ErrTooLarge
// or decode to fields that encode back to the same bytes.
func FuzzParseHeader(f *testing.F) {
	f.Add(fuzzFrame(frameData, 1, 7, nil))
	f.Add(fuzzFrame(frameGoaway, 0, 1, []byte("bye"))[:headerSize])
	f.Add(fuzzFrame(frameAck, 0, 1<<40, nil))
	f.Add(make([]byte, headerSize))
	f.Add([]byte{0xD7, 9})
	f.Fuzz(func(t *testing.T, b []byte) {
		var h header
		err := parseHeader(b, &h)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		var out [headerSize]byte
		crc := h.crc
		putHeader(out[:], &h, 0)
		if !bytes.Equal(out[:32], b[:32]) {
			t.Fatalf("header does not round-trip:\n in  %x\n out %x", b[:32], out[:32])
		}
		_ = crc
	})
}

// FuzzDecodeHandshake: arbitrary bytes as a Hello and as a Welcome, and
// as a framed handshake stream, never panic, and what decodes is valid.
func FuzzDecodeHandshake(f *testing.F) {
	for _, m := range []proto.Message{
		openHello([]uint32{1}, requiredV1),
		&pb.Hello{Versions: []uint32{1}, Capabilities: requiredV1, Purpose: &pb.Hello_Attach{Attach: &pb.Attach{
			SessionId: fuzzID[:], Epoch: 2, Stream: 0, Counter: 9, Token: make([]byte, tokenSize), Received: []uint64{4, 5}}}},
		&pb.Welcome{Version: 1, Capabilities: requiredV1, SessionId: fuzzID[:], Limits: ourLimits(effective{Options: Options{MaxMessage: 1 << 20, WindowMessages: 8, WindowBytes: 1 << 20}}), Received: []uint64{1, 2}},
		&pb.Welcome{Refusal: &pb.Refusal{Code: pb.RefusalCode_REFUSAL_CODE_AUTH, Message: "no"}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		var framed bytes.Buffer
		if err := writeHandshake(&framed, m); err != nil {
			f.Fatal(err)
		}
		f.Add(framed.Bytes())
	}
	f.Add([]byte("DWCP\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := decodeHello(b); err == nil {
			if len(h.GetVersions()) == 0 {
				t.Fatal("hello without versions accepted")
			}
			if a := h.GetAttach(); a != nil && (len(a.GetSessionId()) != idSize || len(a.GetToken()) != tokenSize) {
				t.Fatal("attach with bad id or token accepted")
			}
			if o := h.GetOpen(); o != nil && checkLimits(o.GetLimits()) != nil {
				t.Fatal("open with bad limits accepted")
			}
		}
		if w, err := decodeWelcome(b); err == nil && w.GetRefusal() == nil && len(w.GetSessionId()) != idSize {
			t.Fatal("welcome without a session id accepted")
		}
		if body, err := readHandshakeBody(bytes.NewReader(b)); err == nil && len(body) > maxHandshakeMsg {
			t.Fatal("oversized handshake body accepted")
		}
	})
}

// FuzzReadFrames feeds an arbitrary byte stream to a listener-side
// session's frame reader. It must never panic; what Recv then returns must
// be messages that the stream really carried, intact and in order.
func FuzzReadFrames(f *testing.F) {
	join := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	f.Add(join(fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameData, 0, 2, []byte("bc")), fuzzFrame(frameFin, 0, 2, nil)))
	f.Add(join(fuzzFrame(frameData, 0, 2, []byte("b")), fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameData, 0, 1, []byte("a"))))
	f.Add(join(fuzzFrame(frameData, 1, 1, []byte("prio")), fuzzFrame(framePing, 0, 5, nil), fuzzFrame(frameGoaway, 0, 1, []byte("x"))))
	f.Add(join(fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameData, 0, 1, []byte("b"))))
	f.Add(fuzzFrame(frameData, 0, 1, make([]byte, 100))[:50])
	f.Add(join(fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameRetire, 0, 1, nil)))
	f.Fuzz(func(t *testing.T, stream []byte) { readFramesFuzz(t, stream, 0, nil) })
}

// FuzzReadFramesDataConn is FuzzReadFrames on a data connection of a
// session whose peer may retire connections: RETIRE frames are legal
// there, and must still deliver nothing that was not sent.
func FuzzReadFramesDataConn(f *testing.F) {
	join := func(fs ...[]byte) []byte { return bytes.Join(fs, nil) }
	f.Add(join(fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameRetire, 0, 1, nil)))
	f.Add(join(fuzzFrame(frameData, 0, 2, []byte("b")), fuzzFrame(frameData, 0, 1, []byte("a")), fuzzFrame(frameRetire, 0, 1, nil)))
	f.Add(join(fuzzFrame(frameRetire, 0, 0, nil), fuzzFrame(frameData, 0, 1, []byte("late"))))
	f.Add(fuzzFrame(frameRetire, 0, 7, nil))
	f.Add(join(fuzzFrame(framePad, 0, 0, make([]byte, 64)), fuzzFrame(frameData, 0, 1, []byte("a"))))
	f.Add(join(fuzzFrame(framePad, 0, 0, []byte("pad")), fuzzFrame(framePad, 0, 9, nil), fuzzFrame(frameRetire, 0, 0, nil)))
	f.Fuzz(func(t *testing.T, stream []byte) { readFramesFuzz(t, stream, 1, ourCaps()) })
}

func readFramesFuzz(t *testing.T, stream []byte, conn int, peerCaps []string) {
	cfg, err := Options{MaxMessage: 4096, WindowMessages: 16, WindowBytes: 16384}.resolve(1)
	if err != nil {
		t.Fatal(err)
	}
	s := newSession(false, fuzzID, "fuzz", 1, peerCaps, nil, cfg, 1,
		peerLimits{maxMsg: 4096, winMsgs: 16, winBytes: 16384, priMsgs: 4, priBytes: 4096})
	ep := newEpoch(1)
	s.ep = ep
	c := &wconn{stream: conn}
	r := bytes.NewReader(stream)
	var hb [headerSize]byte
	var h header
	frames := 0
	for s.readFrame(ep, c, r, hb[:], &h) == nil {
		frames++
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for lane := range uint8(numLanes) {
		for i := 0; ; i++ {
			m, _, err := s.recv(ctx, lane)
			if err != nil {
				if i > frames {
					t.Fatalf("lane %d delivered %d messages from %d frames", lane, i, frames)
				}
				if !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled) && s.Err() == nil {
					t.Fatalf("recv: %v", err)
				}
				break
			}
			// A delivered message must occur in the stream as the
			// payload of a frame with a valid CRC: find its header.
			if !bytes.Contains(stream, m) {
				t.Fatalf("delivered %q, which the stream does not carry", m)
			}
		}
	}
	s.cancel()
	ep.cancel()
}
