// Package wire defines the frames DWCP's pipeline exchanges between a
// source and a destination host, on top of the transport's ordered,
// authenticated messages: session hello/accept, data batches covering a
// range of the relayed stream, the end-of-stream digest, the destination's
// verdict, QEMU return-path bytes and aborts.
//
// It owns the byte layout (docs/wire.md) and its validation. It must not
// compress, decompress or interpret batch contents.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the frame format version carried in Hello.
const Version = 1

// Type identifies a frame.
type Type uint8

const (
	// TypeHello (source -> destination) opens a stream: JSON-free,
	// protobuf-free fixed fields plus a small options blob.
	TypeHello Type = 1
	// TypeAccept (destination -> source) answers Hello.
	TypeAccept Type = 2
	// TypeBatch carries one batch of the stream.
	TypeBatch Type = 3
	// TypeCheckpoint (source -> destination) states the length and digest
	// of the stream so far; the destination delivers nothing beyond the
	// last checkpoint it verified. The final checkpoint ends the stream.
	TypeCheckpoint Type = 4
	// TypeDone (destination -> source): the digest matched and every byte
	// was delivered.
	TypeDone Type = 5
	// TypeReturn (destination -> source) carries QEMU return-path bytes.
	TypeReturn Type = 6
	// TypeAbort (either way) ends the session with a reason.
	TypeAbort Type = 7
	// TypeControl (either way) carries a control blob (mode changes,
	// progress) the pipeline defines.
	TypeControl Type = 8
	// TypeResult (destination -> source) reports a migration's outcome
	// after done: whether the destination VM runs.
	TypeResult Type = 9
)

func (t Type) String() string {
	switch t {
	case TypeHello:
		return "hello"
	case TypeAccept:
		return "accept"
	case TypeBatch:
		return "batch"
	case TypeCheckpoint:
		return "checkpoint"
	case TypeDone:
		return "done"
	case TypeReturn:
		return "return"
	case TypeAbort:
		return "abort"
	case TypeControl:
		return "control"
	case TypeResult:
		return "result"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Limits on what a decoder accepts.
const (
	// MaxFrame bounds any frame.
	MaxFrame = 32 << 20
	// MaxBatchDecoded bounds the stream bytes one batch may expand to.
	MaxBatchDecoded = 16 << 20
	// DigestSize is the length of the end-to-end stream digest.
	DigestSize = 32
)

// ErrMalformed wraps every decoding error.
var ErrMalformed = errors.New("malformed frame")

// BatchHeader describes one batch frame.
type BatchHeader struct {
	// Codec is the session-local codec number (0: sections are stored).
	Codec uint8
	// Level the codec used (informational).
	Level int8
	// Flags: FlagPages when the payload is a page-stage batch.
	Flags uint16
	// Offset of the first stream byte the batch covers.
	Offset uint64
	// Decoded is how many stream bytes the batch covers.
	Decoded uint32
	// Raw is the length of the compressed section once decompressed.
	Raw uint32
	// Compressed and Stored are the lengths of the two payload sections.
	Compressed uint32
	Stored     uint32
}

// FlagPages marks a page-stage batch; without it the decompressed section
// is the stream bytes themselves.
const FlagPages uint16 = 1

const batchHeaderSize = 1 + 1 + 1 + 2 + 8 + 4 + 4 + 4 + 4

// AppendBatch appends a batch frame with the two sections to dst.
func AppendBatch(dst []byte, h BatchHeader, compressed, stored []byte) []byte {
	h.Compressed, h.Stored = uint32(len(compressed)), uint32(len(stored))
	dst = append(dst, byte(TypeBatch), h.Codec, byte(h.Level))
	dst = binary.BigEndian.AppendUint16(dst, h.Flags)
	dst = binary.BigEndian.AppendUint64(dst, h.Offset)
	dst = binary.BigEndian.AppendUint32(dst, h.Decoded)
	dst = binary.BigEndian.AppendUint32(dst, h.Raw)
	dst = binary.BigEndian.AppendUint32(dst, h.Compressed)
	dst = binary.BigEndian.AppendUint32(dst, h.Stored)
	dst = append(dst, compressed...)
	return append(dst, stored...)
}

// ParseBatch validates a batch frame and returns its header and sections,
// which alias f.
func ParseBatch(f []byte) (h BatchHeader, compressed, stored []byte, err error) {
	if len(f) > MaxFrame {
		return h, nil, nil, fmt.Errorf("batch frame of %d bytes over the %d limit: %w", len(f), MaxFrame, ErrMalformed)
	}
	if len(f) < batchHeaderSize || Type(f[0]) != TypeBatch {
		return h, nil, nil, fmt.Errorf("batch frame: %d bytes, type %d: %w", len(f), typeOf(f), ErrMalformed)
	}
	h.Codec, h.Level = f[1], int8(f[2])
	h.Flags = binary.BigEndian.Uint16(f[3:])
	h.Offset = binary.BigEndian.Uint64(f[5:])
	h.Decoded = binary.BigEndian.Uint32(f[13:])
	h.Raw = binary.BigEndian.Uint32(f[17:])
	h.Compressed = binary.BigEndian.Uint32(f[21:])
	h.Stored = binary.BigEndian.Uint32(f[25:])
	body := f[batchHeaderSize:]
	switch {
	case h.Flags&^FlagPages != 0:
		return h, nil, nil, fmt.Errorf("batch at offset %d: unknown flags %#x: %w", h.Offset, h.Flags, ErrMalformed)
	case uint64(h.Compressed)+uint64(h.Stored) != uint64(len(body)):
		return h, nil, nil, fmt.Errorf("batch at offset %d: sections %d+%d bytes, frame holds %d: %w", h.Offset, h.Compressed, h.Stored, len(body), ErrMalformed)
	case h.Decoded > MaxBatchDecoded || h.Raw > MaxBatchDecoded:
		return h, nil, nil, fmt.Errorf("batch at offset %d: expands to %d/%d bytes, limit %d: %w", h.Offset, h.Decoded, h.Raw, MaxBatchDecoded, ErrMalformed)
	case h.Offset+uint64(h.Decoded) < h.Offset:
		return h, nil, nil, fmt.Errorf("batch at offset %d: range overflows: %w", h.Offset, ErrMalformed)
	case h.Codec == 0 && h.Compressed != h.Raw:
		return h, nil, nil, fmt.Errorf("batch at offset %d: stored section of %d bytes claims %d raw: %w", h.Offset, h.Compressed, h.Raw, ErrMalformed)
	}
	return h, body[:h.Compressed], body[h.Compressed:], nil
}

// Checkpoint vouches for the stream's first Length bytes.
type Checkpoint struct {
	Length uint64
	Digest [DigestSize]byte
	// Final marks the end of the stream.
	Final bool
}

const checkpointSize = 1 + 1 + 8 + DigestSize

// AppendCheckpoint appends a checkpoint frame.
func AppendCheckpoint(dst []byte, c Checkpoint) []byte {
	var flags byte
	if c.Final {
		flags = 1
	}
	dst = append(dst, byte(TypeCheckpoint), flags)
	dst = binary.BigEndian.AppendUint64(dst, c.Length)
	return append(dst, c.Digest[:]...)
}

// ParseCheckpoint decodes a checkpoint frame.
func ParseCheckpoint(f []byte) (Checkpoint, error) {
	var c Checkpoint
	if len(f) != checkpointSize || Type(f[0]) != TypeCheckpoint || f[1] > 1 {
		return c, fmt.Errorf("checkpoint frame: %d bytes, type %d: %w", len(f), typeOf(f), ErrMalformed)
	}
	c.Final = f[1] == 1
	c.Length = binary.BigEndian.Uint64(f[2:])
	copy(c.Digest[:], f[10:])
	return c, nil
}

// AppendBlob appends a frame of type t whose body is opaque bytes (hello,
// accept, done, return, abort, control).
func AppendBlob(dst []byte, t Type, body []byte) []byte {
	return append(append(dst, byte(t)), body...)
}

// ParseBlob returns the body of a blob frame of type t.
func ParseBlob(f []byte, t Type) ([]byte, error) {
	if len(f) < 1 || Type(f[0]) != t {
		return nil, fmt.Errorf("%s frame: got type %d: %w", t, typeOf(f), ErrMalformed)
	}
	if len(f) > MaxFrame {
		return nil, fmt.Errorf("%s frame of %d bytes over the limit: %w", t, len(f), ErrMalformed)
	}
	return f[1:], nil
}

// TypeOf returns a frame's type, or 0 for an empty frame.
func TypeOf(f []byte) Type { return Type(typeOf(f)) }

func typeOf(f []byte) uint8 {
	if len(f) == 0 {
		return 0
	}
	return f[0]
}
