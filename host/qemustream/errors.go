package qemustream

import (
	"errors"
	"fmt"
	"io"
)

// Sentinel errors that callers branch on with errors.Is. Every error Next
// returns, other than io.EOF, is an *Error wrapping one of these or the
// underlying reader's own error.
var (
	// ErrCorrupt marks bytes that no QEMU writes: bad magic, unknown record
	// type or flags, a length over its limit, a section id never started.
	ErrCorrupt = errors.New("corrupt migration stream")
	// ErrTruncated marks a stream that ended before its structure did. It
	// matches io.ErrUnexpectedEOF as well.
	ErrTruncated = fmt.Errorf("truncated migration stream: %w", io.ErrUnexpectedEOF)
	// ErrUnsupported marks valid QEMU output this reader does not handle:
	// RDMA hook records, stream version 2, unknown configuration subsections.
	ErrUnsupported = errors.New("unsupported migration stream feature")
)

// Error describes why the stream could not be read and where.
type Error struct {
	// Offset is the stream offset of the unit that failed: the first byte
	// of the record, header or length field that was wrong or cut short.
	Offset int64
	// What says what was wrong, in words.
	What string
	// Err is ErrCorrupt, ErrTruncated, ErrUnsupported or the underlying
	// reader's error.
	Err error
}

func (e *Error) Error() string {
	return fmt.Sprintf("qemustream: %s at stream offset %d: %v", e.What, e.Offset, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// errFlush is internal: a parse step needs buffer room that only handing out
// the pending opaque run can free. The step has consumed nothing and is
// simply retried on the next call.
var errFlush = errors.New("qemustream: flush pending opaque bytes")
