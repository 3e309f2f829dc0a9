package pagestage

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"

	"github.com/zeebo/xxh3"
)

// Decoder rebuilds stream bytes from batches on the destination, applying
// them strictly in order and mirroring the encoder's state. A Decoder is not
// safe for concurrent use.
//
// A batch rejected on its header (wrong sequence number, over a limit,
// malformed header) leaves the decoder as it was, so the right batch may
// still be applied. Once a batch's records have started to apply, any error
// ends the session: every later call returns ErrFailed.
type Decoder struct {
	opts   DecoderOptions
	seq    uint64
	blocks []string
	ring   dedupRing
	cache  deltaCache
	err    error
	buf    []byte // DecodeTo's output, reused
	stats  Stats
	// known is the hash of the page the last KNOWN record rebuilt (already
	// checked), so that the observer does not hash it again.
	known PageHash
}

// NewDecoder returns a decoder for one session.
func NewDecoder(opts DecoderOptions) *Decoder {
	return &Decoder{opts: opts.withDefaults()}
}

// Stats returns the counters so far.
func (d *Decoder) Stats() Stats { return d.stats }

// Blocks returns the session's block table, in index order.
func (d *Decoder) Blocks() []string { return slices.Clone(d.blocks) }

// DecodeTo decodes b and writes its bytes to w in one Write, once they are
// verified. It returns the number of bytes written.
func (d *Decoder) DecodeTo(w io.Writer, b Batch) (int, error) {
	out, err := d.Decode(d.buf[:0], b)
	if err != nil {
		return 0, err
	}
	d.buf = out
	n, err := w.Write(out)
	if err != nil {
		return n, fmt.Errorf("pagestage: write decoded batch %d: %w", d.seq-1, err)
	}
	return n, nil
}

// Decode appends the bytes of batch b to dst. On error it returns dst
// unchanged: no unverified byte is ever returned.
func (d *Decoder) Decode(dst []byte, b Batch) ([]byte, error) {
	if d.err != nil {
		return dst, fmt.Errorf("pagestage: decode batch %d: %w: %w", d.seq, ErrFailed, d.err)
	}
	h, err := parseHeader(b.Compressible)
	if err != nil {
		return dst, err
	}
	switch {
	case h.seq != d.seq:
		return dst, fmt.Errorf("pagestage: decode batch %d: expected batch %d: %w", h.seq, d.seq, ErrOutOfOrder)
	case uint64(h.decodedLen) > uint64(d.opts.MaxBatchBytes):
		return dst, fmt.Errorf("pagestage: decode batch %d: %d decoded bytes, limit %d: %w", h.seq, h.decodedLen, d.opts.MaxBatchBytes, ErrLimit)
	case uint64(h.storedLen) != uint64(len(b.Stored)):
		return dst, fmt.Errorf("pagestage: decode batch %d: stored section is %d bytes, header says %d: %w", h.seq, len(b.Stored), h.storedLen, ErrCorrupt)
	}
	start := len(dst)
	dst = slices.Grow(dst, int(h.decodedLen))
	out, err := d.apply(dst, h, b)
	if err == nil {
		if sum := xxh3.Hash(out[start:]); sum != h.sum {
			err = fmt.Errorf("decoded bytes hash to %#016x, encoder's were %#016x: %w", sum, h.sum, ErrChecksum)
		}
	}
	if err != nil {
		d.err = err
		return dst[:start], fmt.Errorf("pagestage: decode batch %d: %w", h.seq, err)
	}
	d.seq++
	d.stats.Batches++
	d.stats.CompressibleBytes += uint64(len(b.Compressible))
	d.stats.StoredBytes += uint64(len(b.Stored))
	return out, nil
}

// batchReader walks the records of one batch.
type batchReader struct {
	p      []byte
	off    int // next unread byte of p
	tagOff int // start of the current record, for errors
}

func (r *batchReader) errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("record at offset %d: %s: %w", r.tagOff, fmt.Sprintf(format, args...), sentinel)
}

func (r *batchReader) uvarint(what string) (uint64, error) {
	v, n := binary.Uvarint(r.p[r.off:])
	if n <= 0 {
		return 0, r.errorf(ErrCorrupt, "%s: bad or truncated uvarint", what)
	}
	r.off += n
	return v, nil
}

func (r *batchReader) bytes(n uint64, what string) ([]byte, error) {
	if n > uint64(len(r.p)-r.off) {
		return nil, r.errorf(ErrCorrupt, "%s: %d bytes, %d left in the section", what, n, len(r.p)-r.off)
	}
	b := r.p[r.off : r.off+int(n)]
	r.off += int(n)
	return b, nil
}

// apply decodes the records of b onto dst, whose capacity already holds the
// declared length, so page slices of dst stay valid while records apply.
func (d *Decoder) apply(dst []byte, h header, b Batch) ([]byte, error) {
	r := batchReader{p: b.Compressible, off: headerSize}
	limit := len(dst) + int(h.decodedLen)
	stored := b.Stored
	prevBlock, prevPfn := int64(-1), ^uint64(0)
	if h.seq == 0 && (r.off == len(r.p) || r.p[r.off] != kindParams) {
		return dst, fmt.Errorf("first batch does not start with the session parameters: %w", ErrCorrupt)
	}
	for r.off < len(r.p) {
		r.tagOff = r.off
		tag := r.p[r.off]
		r.off++
		kind, flags := tag&kindMask, tag&^kindMask
		if kind < kindFull && flags != 0 {
			return dst, r.errorf(ErrCorrupt, "flags %#x on record kind %d", flags, kind)
		}
		switch kind {
		case kindParams:
			if h.seq != 0 || r.tagOff != headerSize {
				return dst, r.errorf(ErrCorrupt, "session parameters after the start of the session")
			}
			if err := d.params(&r); err != nil {
				return dst, err
			}
		case kindBlock:
			n, err := r.uvarint("block name length")
			if err != nil {
				return dst, err
			}
			if n > maxBlockName || len(d.blocks) >= maxBlocks {
				return dst, r.errorf(ErrCorrupt, "block %d, name of %d bytes: over the limits %d blocks, %d bytes",
					len(d.blocks), n, maxBlocks, maxBlockName)
			}
			name, err := r.bytes(n, "block name")
			if err != nil {
				return dst, err
			}
			d.blocks = append(d.blocks, string(name))
		case kindOpaque:
			n, err := r.uvarint("opaque length")
			if err != nil {
				return dst, err
			}
			if n == 0 || n > uint64(limit-len(dst)) {
				return dst, r.errorf(ErrCorrupt, "opaque run of %d bytes with %d left to decode", n, limit-len(dst))
			}
			data, err := r.bytes(n, "opaque bytes")
			if err != nil {
				return dst, err
			}
			dst = append(dst, data...)
			d.stats.OpaqueBytes += n
		case kindZero:
			n, err := r.uvarint("zero run")
			if err != nil {
				return dst, err
			}
			if n == 0 || n > uint64((limit-len(dst))/PageSize) {
				return dst, r.errorf(ErrCorrupt, "run of %d zero pages with %d bytes left to decode", n, limit-len(dst))
			}
			end := len(dst) + int(n)*PageSize
			clear(dst[len(dst):end])
			dst = dst[:end]
			d.stats.Pages[PageZero] += n
			d.stats.PageBytes += n * PageSize
		case kindFull, kindStored, kindDup, kindDelta, kindKnown:
			index, addr := flags&flagIndex != 0, flags&flagAddr != 0
			switch {
			case index && (kind == kindDup || !d.ring.enabled()):
				return dst, r.errorf(ErrCorrupt, "dedup insert on kind %d (ring of %d entries)", kind, d.ring.store.n)
			case addr && !d.cache.enabled():
				return dst, r.errorf(ErrCorrupt, "address on a session without a delta cache")
			case kind == kindDelta && !addr:
				return dst, r.errorf(ErrCorrupt, "delta without an address")
			case flags&flagSameBlock != 0 && (!addr || prevBlock < 0):
				return dst, r.errorf(ErrCorrupt, "same-block flag without a previous address")
			case limit-len(dst) < PageSize:
				return dst, r.errorf(ErrCorrupt, "page with %d bytes left to decode", limit-len(dst))
			}
			var bi uint32
			var pfn uint64
			if addr {
				if flags&flagSameBlock != 0 {
					bi = uint32(prevBlock)
				} else {
					v, err := r.uvarint("block index")
					if err != nil {
						return dst, err
					}
					if v >= uint64(len(d.blocks)) {
						return dst, r.errorf(ErrCorrupt, "block index %d of %d defined", v, len(d.blocks))
					}
					bi = uint32(v)
				}
				z, err := r.uvarint("page number")
				if err != nil {
					return dst, err
				}
				pfn = prevPfn + 1 + unzigzag(z)
				prevBlock, prevPfn = int64(bi), pfn
			}
			page := dst[len(dst) : len(dst)+PageSize]
			dst = dst[:len(dst)+PageSize]
			var err error
			stored, err = d.page(&r, kind, page, stored, bi, pfn)
			if err != nil {
				return dst, err
			}
			if obs := d.opts.Observer; obs != nil && kind != kindDup {
				h := d.known
				if kind != kindKnown {
					h = PageHash(xxh3.Hash128(page))
				}
				obs.ObservePage(h, page)
			}
			if index {
				if d.ring.count >= uint64(d.ring.store.n) {
					d.stats.DedupEvictions++
				}
				d.ring.insert(page)
			}
			if addr {
				mem, evicted := d.cache.put(bi, pfn)
				copy(mem, page)
				if evicted {
					d.stats.DeltaEvictions++
				}
			}
			d.stats.PageBytes += PageSize
		default:
			return dst, r.errorf(ErrCorrupt, "unknown record kind %d", kind)
		}
	}
	if len(dst) != limit {
		return dst, fmt.Errorf("batch decodes to %d bytes, header says %d: %w", int(h.decodedLen)-(limit-len(dst)), h.decodedLen, ErrCorrupt)
	}
	if len(stored) != 0 {
		return dst, fmt.Errorf("%d bytes of the stored section unused: %w", len(stored), ErrCorrupt)
	}
	return dst, nil
}

// page fills page from one page record's payload and returns what is left
// of the stored section.
func (d *Decoder) page(r *batchReader, kind byte, page, stored []byte, bi uint32, pfn uint64) ([]byte, error) {
	switch kind {
	case kindFull:
		data, err := r.bytes(PageSize, "page")
		if err != nil {
			return stored, err
		}
		copy(page, data)
		d.stats.Pages[PageFull]++
	case kindStored:
		if len(stored) < PageSize {
			return stored, r.errorf(ErrCorrupt, "stored page with %d bytes left in the stored section", len(stored))
		}
		copy(page, stored[:PageSize])
		stored = stored[PageSize:]
		d.stats.Pages[PageStored]++
	case kindDup:
		dist, err := r.uvarint("dedup distance")
		if err != nil {
			return stored, err
		}
		src, ok := d.ring.get(dist)
		if !ok {
			return stored, r.errorf(ErrUnknownBase, "dedup reference %d back, ring holds %d", dist, d.ring.held())
		}
		copy(page, src)
		d.stats.Pages[PageDup]++
	case kindKnown:
		raw, err := r.bytes(16, "known-page hash")
		if err != nil {
			return stored, err
		}
		h := PageHash{Hi: binary.BigEndian.Uint64(raw), Lo: binary.BigEndian.Uint64(raw[8:])}
		if d.opts.Known == nil {
			return stored, r.errorf(ErrUnknownBase, "known page %v and no known-page store", h)
		}
		if err := d.opts.Known.KnownPage(h, page); err != nil {
			return stored, fmt.Errorf("record at offset %d: known page %v: %w: %w", r.tagOff, h, ErrUnknownBase, err)
		}
		if got := xxh3.Hash128(page); PageHash(got) != h {
			return stored, r.errorf(ErrUnknownBase, "known-page store returned content hashing to %v for %v", PageHash(got), h)
		}
		d.known = h
		d.stats.Pages[PageKnown]++
	case kindDelta:
		base, ok := d.cache.lookup(bi, pfn)
		if !ok {
			return stored, r.errorf(ErrUnknownBase, "delta for block %d page %d, which is not cached", bi, pfn)
		}
		n, err := r.uvarint("delta length")
		if err != nil {
			return stored, err
		}
		spans, err := r.bytes(n, "delta spans")
		if err != nil {
			return stored, err
		}
		copy(page, base)
		if err := applyDelta(page, spans); err != nil {
			return stored, r.errorf(ErrCorrupt, "%v", err)
		}
		d.stats.Pages[PageDelta]++
		d.stats.DeltaBytes += n
	}
	return stored, nil
}

// params adopts the session's parameters, within the decoder's limits.
func (d *Decoder) params(r *batchReader) error {
	var v [4]uint64
	for i, what := range [4]string{"page size", "dedup entries", "delta cache sets", "delta cache ways"} {
		var err error
		if v[i], err = r.uvarint(what); err != nil {
			return err
		}
	}
	pageSize, entries, sets, ways := v[0], v[1], v[2], v[3]
	switch {
	case pageSize != PageSize:
		return r.errorf(ErrCorrupt, "page size %d, only %d is supported", pageSize, PageSize)
	case (sets == 0) != (ways == 0) || ways > maxWays:
		return r.errorf(ErrCorrupt, "delta cache of %d sets of %d ways", sets, ways)
	case entries > uint64(min(d.opts.MaxDedupEntries, maxEntries)):
		return r.errorf(ErrLimit, "dedup ring of %d entries, limit %d", entries, min(d.opts.MaxDedupEntries, maxEntries))
	case sets > maxEntries || sets*ways > maxEntries || int64(sets*ways)*PageSize > d.opts.MaxDeltaCacheBytes:
		return r.errorf(ErrLimit, "delta cache of %d x %d pages, limit %d bytes", sets, ways, d.opts.MaxDeltaCacheBytes)
	}
	d.ring.init(int(entries))
	d.cache.init(int(sets), int(ways))
	return nil
}
