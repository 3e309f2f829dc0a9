package qataccel

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// appendWriter lets a flate.Writer append straight into the caller's dst.
type appendWriter struct{ buf []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	return len(p), nil
}

// deflater pairs a flate.Writer with the appendWriter it writes to. A
// flate.Writer holds about 1 MiB of state, so they are pooled per level
// (a writer's level is fixed at creation).
type deflater struct {
	aw appendWriter
	fw *flate.Writer
}

var deflaters [MaxLevel + 1]sync.Pool

func deflate(dst []byte, level int64, in []byte) ([]byte, error) {
	if level < MinLevel || level > MaxLevel {
		return dst, fmt.Errorf("qat-emulated %s: level %d (want %d-%d): %w", accel.OpCompress, level, MinLevel, MaxLevel, sdk.ErrInvalidArgument)
	}
	d, _ := deflaters[level].Get().(*deflater)
	if d == nil {
		d = &deflater{}
		fw, err := flate.NewWriter(&d.aw, int(level))
		if err != nil {
			return dst, fmt.Errorf("qat-emulated %s: %w", accel.OpCompress, err)
		}
		d.fw = fw
	}
	start := len(dst)
	d.aw.buf = dst
	d.fw.Reset(&d.aw)
	_, werr := d.fw.Write(in)
	cerr := d.fw.Close()
	out := d.aw.buf
	// Drop the reference to the caller's buffer before pooling.
	d.aw.buf = nil
	deflaters[level].Put(d)
	if err := errors.Join(werr, cerr); err != nil {
		return out[:start], fmt.Errorf("qat-emulated %s: %w", accel.OpCompress, err)
	}
	return out, nil
}

// inflater pairs a flate reader with the bytes.Reader it reads from;
// pooled because a flate reader allocates its 32 KiB window once.
type inflater struct {
	br bytes.Reader
	fr io.ReadCloser
}

var inflaters = sync.Pool{New: func() any {
	f := &inflater{}
	f.fr = flate.NewReader(&f.br)
	return f
}}

func inflate(dst []byte, maxSize int64, in []byte) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("qat-emulated %s: maximum output %d: %w", accel.OpDecompress, maxSize, sdk.ErrInvalidArgument)
	}
	f := inflaters.Get().(*inflater)
	defer func() {
		f.br.Reset(nil)
		inflaters.Put(f)
	}()
	f.br.Reset(in)
	if err := f.fr.(flate.Resetter).Reset(&f.br, nil); err != nil {
		return dst, fmt.Errorf("qat-emulated %s: %w", accel.OpDecompress, err)
	}
	start := len(dst)
	for {
		produced := int64(len(dst) - start)
		if produced > maxSize {
			return dst[:start], fmt.Errorf("qat-emulated %s: block decodes to more than %d bytes: %w", accel.OpDecompress, maxSize, sdk.ErrTooLarge)
		}
		// Read at most one byte past the limit: enough to know it was
		// crossed, never enough to let a bomb grow dst.
		want := maxSize + 1 - produced
		if len(dst) == cap(dst) {
			dst = slices.Grow(dst, int(min(want, int64(max(4096, len(dst)-start)))))
		}
		room := dst[len(dst):cap(dst)]
		if int64(len(room)) > want {
			room = room[:want]
		}
		n, err := f.fr.Read(room)
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = errors.New("block is truncated")
			}
			return dst[:start], fmt.Errorf("qat-emulated %s: %v: %w", accel.OpDecompress, err, sdk.ErrCorruptInput)
		}
	}
	if int64(len(dst)-start) > maxSize {
		return dst[:start], fmt.Errorf("qat-emulated %s: block decodes to more than %d bytes: %w", accel.OpDecompress, maxSize, sdk.ErrTooLarge)
	}
	// The deflate stream ended at its final block; anything after it is
	// not part of one compressed block.
	if rest := f.br.Len(); rest > 0 {
		return dst[:start], fmt.Errorf("qat-emulated %s: %d bytes after the final deflate block: %w", accel.OpDecompress, rest, sdk.ErrCorruptInput)
	}
	return dst, nil
}
