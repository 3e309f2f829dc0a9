package pipeline

import (
	"fmt"
	"sync"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
)

// Batch is a closed batch: the section for the codec, the section stored
// as is, and how many stream bytes it stands for.
type Batch struct {
	Compressible []byte
	Stored       []byte
	Decoded      int
	Pages        bool   // built by a page stage
	Offset       uint64 // set by the pipeline
	// Release returns the buffers once the frame is sent; may be nil.
	Release func()
}

// PageStats counts what a page stage did.
type PageStats struct {
	Pages, Zero, Duplicate, Delta, Full, Stored uint64
	BytesIn, CompressibleOut, StoredOut         uint64
}

// BatchBuilder accumulates stream bytes into batches on the source.
type BatchBuilder interface {
	AddOpaque(b []byte)
	AddPage(block string, addr uint64, page []byte)
	// Pending is the stream bytes added since the last Flush.
	Pending() int
	// Flush closes the current batch; an error ends the session.
	Flush() (Batch, error)
	Stats() PageStats
}

// BatchDecoder rebuilds stream bytes from batches on the destination, in
// order.
type BatchDecoder interface {
	// Decode appends the stream bytes of one batch to dst.
	Decode(dst, compressible, stored []byte, decoded int) ([]byte, error)
}

// BatchBuilderFactory makes the page stage of a session, with the
// parameters the destination needs to mirror it.
type BatchBuilderFactory interface {
	NewBuilder() BatchBuilder
	Params() *streamv1.PageStageParams
}

// DecoderFactory makes the destination half from the source's parameters.
type DecoderFactory func(*streamv1.PageStageParams) (BatchDecoder, error)

// rawBuilder batches stream bytes as they are.
type rawBuilder struct {
	buf  []byte
	pool sync.Pool // *[]byte buffers whose frames were sent
}

func (r *rawBuilder) AddOpaque(b []byte) { r.buf = append(r.buf, b...) }

func (r *rawBuilder) AddPage(_ string, _ uint64, page []byte) { r.buf = append(r.buf, page...) }

func (r *rawBuilder) Pending() int { return len(r.buf) }

func (r *rawBuilder) Flush() (Batch, error) {
	buf := r.buf
	next, _ := r.pool.Get().(*[]byte)
	if next == nil {
		next = new([]byte)
	}
	r.buf = (*next)[:0]
	return Batch{Compressible: buf, Decoded: len(buf), Release: func() { buf = buf[:0]; r.pool.Put(&buf) }}, nil
}

func (r *rawBuilder) Stats() PageStats { return PageStats{} }

// rawDecoder is the destination half of rawBuilder.
type rawDecoder struct{}

func (rawDecoder) Decode(dst, compressible, stored []byte, decoded int) ([]byte, error) {
	if len(stored) != 0 || len(compressible) != decoded {
		return dst, fmt.Errorf("raw batch: %d+%d bytes for %d stream bytes: %w", len(compressible), len(stored), decoded, ErrProtocol)
	}
	return append(dst, compressible...), nil
}
