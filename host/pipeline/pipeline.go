// Package pipeline carries one stream (a QEMU migration stream, a saved VM
// state, any file) from a source host to a destination host over a
// message connection, and hands the destination exactly the bytes the
// source read.
//
// On the source: read, recognise a QEMU stream by itself, cut batches
// (through the page stage when the stream is QEMU's and the mode wants
// it), compress each batch with the codec and level the policy picks, in
// parallel, and send frames in order with periodic digest checkpoints. On
// the destination: decompress in parallel, rebuild the bytes in order,
// and release them only up to the last checkpoint whose length and BLAKE3
// digest matched. QEMU's return path travels back the same connection.
//
// The package owns the data path between the QEMU sockets and the
// transport. It must not open connections, pick modes or talk to QEMU.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/wire"
	"github.com/dwcp/dwcp/sdk/codec"
	"google.golang.org/protobuf/proto"
)

// Conn is the ordered, reliable message connection the pipeline runs on
// (a transport session). Send must be done with msg when it returns: the
// pipeline reuses the memory for its next frame.
type Conn interface {
	Send(ctx context.Context, msg []byte) error
	Recv(ctx context.Context) ([]byte, error)
}

// Codec is a codec the session may use, under a session-local id (1..255).
type Codec struct {
	ID        uint8
	Algorithm string
	Codec     codec.Codec
}

// Choice is a policy's decision for one batch: codec id (0 stores the
// batch uncompressed) and level.
type Choice struct {
	Codec uint8
	Level int
}

// Sentinel errors callers branch on.
var (
	// ErrDigestMismatch: the destination's bytes do not hash to what the
	// source sent; nothing past the last good checkpoint was delivered.
	ErrDigestMismatch = errors.New("stream digest mismatch")
	// ErrAborted: the peer ended the session with an Abort frame.
	ErrAborted = errors.New("aborted by peer")
	// ErrProtocol: the peer broke the frame protocol.
	ErrProtocol = errors.New("pipeline protocol violation")
)

// digestName is the only digest this version speaks.
const digestName = "blake3-256"

func marshalFrame(t wire.Type, m proto.Message) ([]byte, error) {
	body, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", t, err)
	}
	return wire.AppendBlob(nil, t, body), nil
}

func unmarshalFrame(f []byte, t wire.Type, m proto.Message) error {
	body, err := wire.ParseBlob(f, t)
	if err != nil {
		return err
	}
	if err := proto.Unmarshal(body, m); err != nil {
		return fmt.Errorf("decode %s frame: %v: %w", t, err, wire.ErrMalformed)
	}
	return nil
}

// abortError turns a received Abort frame into an error.
func abortError(f []byte) error {
	var a streamv1.Abort
	if err := unmarshalFrame(f, wire.TypeAbort, &a); err != nil {
		return fmt.Errorf("%w (unreadable abort frame: %v)", ErrAborted, err)
	}
	if a.Code == streamv1.AbortCode_ABORT_CODE_DIGEST_MISMATCH {
		return fmt.Errorf("%w: %w: %s", ErrAborted, ErrDigestMismatch, a.Message)
	}
	return fmt.Errorf("%w: %s: %s", ErrAborted, a.Code, a.Message)
}

// sendAbort tells the peer why the session ends, best effort.
func sendAbort(ctx context.Context, c Conn, code streamv1.AbortCode, err error) {
	f, merr := marshalFrame(wire.TypeAbort, &streamv1.Abort{Code: code, Message: err.Error()})
	if merr == nil {
		_ = c.Send(ctx, f)
	}
}

// peerAbort looks briefly for an Abort the peer sent before the connection
// failed, so that the error names the peer's reason rather than the broken
// pipe it caused.
func peerAbort(ctx context.Context, c Conn) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 200*time.Millisecond)
	defer cancel()
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			return nil
		}
		if wire.TypeOf(f) == wire.TypeAbort {
			return abortError(f)
		}
	}
}
