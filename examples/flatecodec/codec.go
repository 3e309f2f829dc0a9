package main

import (
	"bytes"
	"compress/flate"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
)

// Codec is a DEFLATE (RFC 1951, raw, no zlib or gzip wrapper) block codec
// built on the standard library. Levels are compress/flate's 1 (fastest)
// to 9 (smallest). It is safe for concurrent use.
type Codec struct {
	writers [flate.BestCompression + 1]sync.Pool // *encoder, one pool per level
	readers sync.Pool                            // *decoder
}

// NewCodec returns the codec.
func NewCodec() *Codec { return &Codec{} }

// encoder pairs a flate.Writer (about 600 KiB of state, so it is pooled,
// not rebuilt per call) with the appending sink it writes to.
type encoder struct {
	w    *flate.Writer
	sink appender
}

// appender is an io.Writer that appends to a slice: flate writes straight
// into the caller's dst.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

type decoder struct {
	src bytes.Reader // a ByteReader, so flate reads no further than its stream
	r   io.ReadCloser
}

// Capabilities implements codec.Codec.
func (*Codec) Capabilities() codec.Capabilities {
	return codec.Capabilities{
		Algorithm: "deflate",
		Levels:    codec.LevelRange{Min: flate.BestSpeed, Max: flate.BestCompression, Default: 6},
		// Measure your own codec's speed before you pick these (see
		// README.md): the host uses the local level on fat links, the
		// global one where bytes are dear.
		Tiers:         [3]int{codec.TierLocal: 1, codec.TierRegional: 4, codec.TierGlobal: 6},
		Deterministic: true,
		// Incompressible data goes into stored blocks: 5 bytes of header
		// per block of at most 65535 bytes, plus a final empty block.
		Bound: codec.Bound{Num: 1025, Den: 1024, Add: 64},
	}
}

// Encode implements codec.Codec: it appends one raw DEFLATE stream.
func (c *Codec) Encode(dst, src []byte, level int) ([]byte, error) {
	if level < flate.BestSpeed || level > flate.BestCompression {
		return dst, fmt.Errorf("deflate encode: level %d outside 1..9: %w", level, sdk.ErrInvalidArgument)
	}
	e, _ := c.writers[level].Get().(*encoder)
	if e == nil {
		e = &encoder{}
		w, err := flate.NewWriter(&e.sink, level)
		if err != nil {
			return dst, fmt.Errorf("deflate encode: %w", err)
		}
		e.w = w
	}
	defer c.writers[level].Put(e)
	e.sink.b = dst
	e.w.Reset(&e.sink)
	_, werr := e.w.Write(src)
	cerr := e.w.Close()
	out := e.sink.b
	e.sink.b = nil // do not keep the caller's buffer alive in the pool
	if err := errors.Join(werr, cerr); err != nil {
		return dst, fmt.Errorf("deflate encode: %w", err)
	}
	return out, nil
}

// Decode implements codec.Codec. DEFLATE does not record the decoded size,
// so the output is read under a running limit: it grows with the data and
// stops one byte past maxSize, never allocating maxSize up front.
func (c *Codec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if maxSize < 0 {
		return dst, fmt.Errorf("deflate decode: maxSize %d: %w", maxSize, sdk.ErrInvalidArgument)
	}
	d, _ := c.readers.Get().(*decoder)
	if d == nil {
		d = &decoder{}
		d.src.Reset(src)
		d.r = flate.NewReader(&d.src)
	} else {
		d.src.Reset(src)
		if err := d.r.(flate.Resetter).Reset(&d.src, nil); err != nil {
			return dst, fmt.Errorf("deflate decode: %w", err)
		}
	}
	defer func() {
		d.src.Reset(nil)
		c.readers.Put(d)
	}()

	// One byte over the limit proves the output too large; keep that
	// sum from overflowing for a caller that passes "no limit".
	maxSize = min(maxSize, math.MaxInt/2)
	base := len(dst)
	out := dst
	for {
		if len(out) == cap(out) {
			// Grow geometrically, but never past one byte over the limit.
			room := min(max(len(out)-base, 4<<10), maxSize+1-(len(out)-base))
			out = slices.Grow(out, room)
		}
		end := min(cap(out), base+maxSize+1)
		n, err := d.r.Read(out[len(out):end])
		out = out[:len(out)+n]
		if len(out)-base > maxSize {
			return dst, fmt.Errorf("deflate decode: output exceeds limit %d: %w", maxSize, sdk.ErrTooLarge)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return dst, fmt.Errorf("deflate decode: %v: %w", err, sdk.ErrCorruptInput)
		}
	}
	if d.src.Len() != 0 {
		return dst, fmt.Errorf("deflate decode: %d bytes after the end of the stream: %w", d.src.Len(), sdk.ErrCorruptInput)
	}
	return out, nil
}
