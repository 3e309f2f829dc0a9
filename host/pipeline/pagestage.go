package pipeline

import (
	"fmt"
	"sync"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pagestage"
)

// PageStage adapts host/pagestage to the pipeline: the source's batch
// builder and the destination's mirrored decoder.
type PageStage struct {
	Options pagestage.Options
}

// DefaultPageStage has every technique on with the default cache sizes.
func DefaultPageStage() *PageStage { return &PageStage{} }

// NewBuilder starts a session's encoder.
func (p *PageStage) NewBuilder(h PageHooks) BatchBuilder {
	opts := p.Options
	if h.Known != nil {
		opts.Known = h.Known
	}
	if h.Observer != nil {
		opts.Observer = h.Observer
	}
	enc, err := pagestage.NewEncoder(opts)
	return &pageBuilder{enc: enc, err: err}
}

// Params tells the destination what it mirrors. The encoder also writes
// its geometry into its first batch, which the decoder checks against its
// own limits.
func (p *PageStage) Params() *streamv1.PageStageParams {
	return &streamv1.PageStageParams{
		Enabled:         true,
		HashEntries:     uint64(max(p.Options.DedupEntries, 0)),
		DeltaCacheBytes: uint64(max(p.Options.DeltaCacheBytes, 0)),
	}
}

// PageStageDecoder is the destination's DecoderFactory.
func PageStageDecoder(_ *streamv1.PageStageParams, h PageHooks) (BatchDecoder, error) {
	return &pageDecoder{dec: pagestage.NewDecoder(pagestage.DecoderOptions{Known: h.Store, Observer: h.Observer})}, nil
}

type pageBuilder struct {
	enc  *pagestage.Encoder
	err  error
	lent []byte    // the memory the encoder's current batch was started in by FlushInto
	pool sync.Pool // *pagestage.Batch whose buffers are free again
}

func (b *pageBuilder) AddOpaque(p []byte) {
	if b.enc != nil {
		b.enc.AddOpaque(p)
	}
}

func (b *pageBuilder) AddPage(block string, addr uint64, page []byte) {
	if b.enc != nil {
		b.enc.AddPage(block, addr, page)
	}
}

func (b *pageBuilder) Pending() int {
	if b.enc == nil {
		return 0
	}
	return b.enc.Pending()
}

func (b *pageBuilder) Flush() (Batch, error) { return b.flush(nil, false) }

func (b *pageBuilder) FlushInto(next []byte) (Batch, error) { return b.flush(next, true) }

func (b *pageBuilder) flush(next []byte, lend bool) (Batch, error) {
	if b.err != nil {
		return Batch{}, b.err
	}
	decoded := b.enc.Pending()
	if decoded == 0 {
		return Batch{}, nil
	}
	// The encoder keeps the buffers it is handed for its next batch; the
	// ones it hands back travel with the frame until it is sent.
	pb, _ := b.pool.Get().(*pagestage.Batch)
	if pb == nil {
		pb = &pagestage.Batch{}
	}
	if lend {
		pb.Compressible = next[:0]
	}
	if err := b.enc.Flush(pb); err != nil {
		b.err = err
		return Batch{}, fmt.Errorf("page stage: %w", err)
	}
	wasLent := b.lent
	b.lent = nil
	if lend {
		b.lent = next
	}
	// Lent memory goes back to its lender, never into the pool, or the
	// encoder would later write a batch into a slot someone else holds.
	inLent := sameStart(pb.Compressible, wasLent)
	return Batch{
		Compressible: pb.Compressible, Stored: pb.Stored, Decoded: decoded, Pages: true,
		Release: func() {
			if inLent {
				pb.Compressible = nil
			}
			b.pool.Put(pb)
		},
	}, nil
}

func (b *pageBuilder) Stats() PageStats {
	if b.enc == nil {
		return PageStats{}
	}
	s := b.enc.Stats()
	return PageStats{
		Pages:           s.Pages[pagestage.PageZero] + s.Pages[pagestage.PageDup] + s.Pages[pagestage.PageKnown] + s.Pages[pagestage.PageDelta] + s.Pages[pagestage.PageStored] + s.Pages[pagestage.PageFull],
		Zero:            s.Pages[pagestage.PageZero],
		Duplicate:       s.Pages[pagestage.PageDup],
		Known:           s.Pages[pagestage.PageKnown],
		Delta:           s.Pages[pagestage.PageDelta],
		Full:            s.Pages[pagestage.PageFull],
		Stored:          s.Pages[pagestage.PageStored],
		BytesIn:         s.BytesIn(),
		CompressibleOut: s.CompressibleBytes,
		StoredOut:       s.StoredBytes,
	}
}

type pageDecoder struct {
	dec *pagestage.Decoder
}

func (d *pageDecoder) Decode(dst, compressible, stored []byte, decoded int) ([]byte, error) {
	start := len(dst)
	out, err := d.dec.Decode(dst, pagestage.Batch{Compressible: compressible, Stored: stored})
	if err != nil {
		return dst, err
	}
	if len(out)-start != decoded {
		return dst, fmt.Errorf("page-stage batch rebuilt to %d bytes, frame says %d: %w", len(out)-start, decoded, ErrProtocol)
	}
	return out, nil
}
