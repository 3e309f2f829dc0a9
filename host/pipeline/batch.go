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

// PageStats counts what a page stage did. Known counts pages sent as
// references to the destination's page history (earlier sessions);
// Duplicate those sent as references to earlier pages of this session.
type PageStats struct {
	Pages, Zero, Duplicate, Known, Delta, Full, Stored uint64
	BytesIn, CompressibleOut, StoredOut                uint64
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
// parameters the destination needs to mirror it. The builder is made once
// the destination accepted, with the session's page-history hooks (zero
// when history is not in play).
type BatchBuilderFactory interface {
	NewBuilder(PageHooks) BatchBuilder
	Params() *streamv1.PageStageParams
}

// DecoderFactory makes the destination half from the source's parameters
// and the session's page-history hooks.
type DecoderFactory func(*streamv1.PageStageParams, PageHooks) (BatchDecoder, error)

// lendingBuilder is a BatchBuilder that can build its next batch's
// compressible section in memory it is lent: a codec Buffer leased from a
// plugin codec, so that the codec reads the batch where it was built
// instead of the host copying it into shared memory.
type lendingBuilder interface {
	// FlushInto is Flush, and the builder appends the next batch's
	// compressible section to next (length 0). If the current batch is
	// empty nothing happens and next is not taken. A batch built in lent
	// memory has a Release that leaves that memory alone; a batch that
	// outgrew it was reallocated and is the builder's own again.
	FlushInto(next []byte) (Batch, error)
}

// sameStart reports whether b starts where lent does, i.e. was built in it.
func sameStart(b, lent []byte) bool {
	return len(b) > 0 && cap(lent) > 0 && &b[0] == &lent[:1][0]
}

// rawBuilder batches stream bytes as they are.
type rawBuilder struct {
	buf  []byte
	lent []byte    // the memory buf was started in by FlushInto; nil: buf is ours
	pool sync.Pool // *[]byte buffers whose frames were sent
}

func (r *rawBuilder) AddOpaque(b []byte) { r.buf = append(r.buf, b...) }

func (r *rawBuilder) AddPage(_ string, _ uint64, page []byte) { r.buf = append(r.buf, page...) }

func (r *rawBuilder) Pending() int { return len(r.buf) }

func (r *rawBuilder) Flush() (Batch, error) {
	if len(r.buf) == 0 {
		return Batch{}, nil
	}
	var next []byte
	if p, _ := r.pool.Get().(*[]byte); p != nil {
		next = (*p)[:0]
	}
	return r.flush(next, nil), nil
}

func (r *rawBuilder) FlushInto(next []byte) (Batch, error) {
	if len(r.buf) == 0 {
		return Batch{}, nil
	}
	return r.flush(next[:0], next), nil
}

func (r *rawBuilder) flush(next, lent []byte) Batch {
	buf, wasLent := r.buf, r.lent
	r.buf, r.lent = next, lent
	b := Batch{Compressible: buf, Decoded: len(buf)}
	if !sameStart(buf, wasLent) {
		b.Release = func() { buf = buf[:0]; r.pool.Put(&buf) }
	}
	return b
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
