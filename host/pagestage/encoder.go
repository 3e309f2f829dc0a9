package pagestage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/zeebo/xxh3"
)

var (
	zeroPage   [PageSize]byte
	zeroHeader [headerSize]byte
)

// Encoder builds batches on the source. Add items in stream order, then
// Flush; the batch decodes to exactly the bytes added since the previous
// Flush. An Encoder is not safe for concurrent use.
type Encoder struct {
	opts     Options
	disabled Technique
	cur      Batch
	seq      uint64
	sum      xxh3.Hasher
	decoded  uint64 // stream bytes in the current batch
	zeroRun  uint64
	err      error

	blocks   map[string]uint32
	lastName string // the block of the previous page: one compare, no map lookup
	lastIdx  uint32
	haveLast bool

	// Address context of the current batch (reset at each batch so that a
	// batch's addresses decode without its predecessors' records).
	prevBlock int64
	prevPfn   uint64

	index   dedupIndex
	cache   deltaCache
	scratch []byte // delta spans of the current page
	// storedBelow is IncompressibleBits as a sampleSum limit.
	storedBelow uint64
	stats       Stats
}

// NewEncoder starts a session. Its first batch carries the session's
// parameters (ring and cache sizes), which the decoder adopts.
func NewEncoder(opts Options) (*Encoder, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Encoder{
		opts:     o,
		disabled: o.Disabled,
		blocks:   make(map[string]uint32),
		// A delta overshoots its limit by at most one span.
		scratch:     make([]byte, 0, 2*PageSize),
		storedBelow: entropyLimit(o.IncompressibleBits),
	}
	e.index.init(o.DedupEntries)
	sets, ways := deltaGeometry(o.DeltaCacheBytes)
	e.cache.init(sets, ways)
	e.startBatch()
	c := append(e.cur.Compressible, kindParams)
	c = binary.AppendUvarint(c, PageSize)
	c = binary.AppendUvarint(c, uint64(o.DedupEntries))
	c = binary.AppendUvarint(c, uint64(sets))
	c = binary.AppendUvarint(c, uint64(ways))
	e.cur.Compressible = c
	return e, nil
}

// SetDisabled replaces the set of disabled techniques from the next page on
// (a mode change). The decoder needs no notice: records say what they are.
func (e *Encoder) SetDisabled(t Technique) { e.disabled = t & AllTechniques }

// Pending is the number of stream bytes added since the last Flush.
func (e *Encoder) Pending() int { return int(min(e.decoded, math.MaxInt)) }

// Stats returns the counters so far; section sizes count flushed batches.
func (e *Encoder) Stats() Stats { return e.stats }

func (e *Encoder) startBatch() {
	e.cur.Compressible = append(e.cur.Compressible[:0], zeroHeader[:]...)
	e.cur.Stored = e.cur.Stored[:0]
	e.prevBlock, e.prevPfn = -1, ^uint64(0)
}

// AddOpaque appends stream bytes the page stage does not interpret.
func (e *Encoder) AddOpaque(b []byte) {
	if len(b) == 0 {
		return
	}
	e.endZeroRun()
	e.sum.Write(b)
	e.decoded += uint64(len(b))
	e.stats.OpaqueBytes += uint64(len(b))
	c := append(e.cur.Compressible, kindOpaque)
	c = binary.AppendUvarint(c, uint64(len(b)))
	e.cur.Compressible = append(c, b...)
}

// AddPage appends the data of one RAM page record: block is its RAMBlock
// name and addr its offset in the block. The bytes are copied. A page that
// is not PageSize bytes is added as opaque bytes.
func (e *Encoder) AddPage(block string, addr uint64, page []byte) {
	if len(page) != PageSize {
		e.stats.Pages[PageOdd]++
		e.AddOpaque(page)
		return
	}
	e.sum.Write(page)
	e.decoded += PageSize
	e.stats.PageBytes += PageSize
	on := AllTechniques &^ e.disabled
	if on&Zero != 0 && bytes.Equal(page, zeroPage[:]) {
		e.zeroRun++
		e.stats.Pages[PageZero]++
		return
	}
	e.endZeroRun()

	useIndex := on&Dedup != 0 && e.index.enabled()
	useKnown := on&Known != 0 && e.opts.Known != nil
	obs := e.opts.Observer
	var h xxh3.Uint128
	if useIndex || useKnown || obs != nil {
		h = xxh3.Hash128(page)
	}
	var bi uint32
	pfn := pageNumber(addr)
	var base []byte
	cached, useAddr := false, false
	if on&Delta != 0 && e.cache.enabled() {
		if bi, useAddr = e.blockIndex(block); useAddr {
			base, cached = e.cache.lookup(bi, pfn)
		}
	}

	if useIndex {
		if dist, ok := e.index.find(h); ok {
			e.pageHead(kindDup, false, useAddr, bi, pfn)
			e.cur.Compressible = binary.AppendUvarint(e.cur.Compressible, dist)
			e.remember(page, h, false, useAddr, bi, pfn)
			e.stats.Pages[PageDup]++
			return
		}
	}
	if useKnown && e.opts.Known.Known(PageHash(h)) {
		e.pageHead(kindKnown, useIndex, useAddr, bi, pfn)
		e.cur.Compressible = binary.BigEndian.AppendUint64(e.cur.Compressible, h.Hi)
		e.cur.Compressible = binary.BigEndian.AppendUint64(e.cur.Compressible, h.Lo)
		e.remember(page, h, useIndex, useAddr, bi, pfn)
		e.stats.Pages[PageKnown]++
		if obs != nil {
			obs.ObservePage(PageHash(h), page)
		}
		return
	}
	if cached {
		spans, ok := appendDelta(e.scratch[:0], base, page, e.opts.DeltaMaxBytes)
		e.scratch = spans[:0]
		if ok {
			e.pageHead(kindDelta, useIndex, true, bi, pfn)
			c := binary.AppendUvarint(e.cur.Compressible, uint64(len(spans)))
			e.cur.Compressible = append(c, spans...)
			e.remember(page, h, useIndex, true, bi, pfn)
			e.stats.Pages[PageDelta]++
			e.stats.DeltaBytes += uint64(len(spans))
			if obs != nil {
				obs.ObservePage(PageHash(h), page)
			}
			return
		}
		e.stats.DeltaRejected++
	}
	if on&Incompressible != 0 && sampleSum(page) < e.storedBelow {
		e.pageHead(kindStored, useIndex, useAddr, bi, pfn)
		e.cur.Stored = append(e.cur.Stored, page...)
		e.stats.Pages[PageStored]++
	} else {
		e.pageHead(kindFull, useIndex, useAddr, bi, pfn)
		e.cur.Compressible = append(e.cur.Compressible, page...)
		e.stats.Pages[PageFull]++
	}
	e.remember(page, h, useIndex, useAddr, bi, pfn)
	if obs != nil {
		obs.ObservePage(PageHash(h), page)
	}
}

// Flush finishes the current batch and hands it over in b. The encoder
// takes b's old buffers for the next batch, so the caller must be done with
// them; in steady state no memory is allocated. After an error the session
// is over.
func (e *Encoder) Flush(b *Batch) error {
	if e.err != nil {
		return e.err
	}
	e.endZeroRun()
	if e.decoded > math.MaxUint32 || len(e.cur.Stored) > math.MaxUint32 {
		e.err = fmt.Errorf("pagestage: flush batch %d: %d stream bytes, the format's limit is %d: %w",
			e.seq, e.decoded, uint64(math.MaxUint32), ErrLimit)
		return e.err
	}
	putHeader(e.cur.Compressible, header{
		version:    formatVersion,
		decodedLen: uint32(e.decoded),
		storedLen:  uint32(len(e.cur.Stored)),
		seq:        e.seq,
		sum:        e.sum.Sum64(),
	})
	e.stats.Batches++
	e.stats.CompressibleBytes += uint64(len(e.cur.Compressible))
	e.stats.StoredBytes += uint64(len(e.cur.Stored))
	*b, e.cur = e.cur, Batch{Compressible: b.Compressible[:0], Stored: b.Stored[:0]}
	e.seq++
	e.sum.Reset()
	e.decoded = 0
	e.startBatch()
	return nil
}

func (e *Encoder) endZeroRun() {
	if e.zeroRun == 0 {
		return
	}
	c := append(e.cur.Compressible, kindZero)
	e.cur.Compressible = binary.AppendUvarint(c, e.zeroRun)
	e.zeroRun = 0
}

// blockIndex returns the session index of a block, defining it in the
// current batch on first use. It reports false once the table is full (or
// for a name QEMU cannot write): such pages travel without an address.
func (e *Encoder) blockIndex(name string) (uint32, bool) {
	if e.haveLast && name == e.lastName {
		return e.lastIdx, true
	}
	idx, ok := e.blocks[name]
	if !ok {
		if len(e.blocks) >= maxBlocks || len(name) > maxBlockName {
			return 0, false
		}
		idx = uint32(len(e.blocks))
		e.blocks[name] = idx
		c := append(e.cur.Compressible, kindBlock)
		c = binary.AppendUvarint(c, uint64(len(name)))
		e.cur.Compressible = append(c, name...)
	}
	e.lastName, e.lastIdx, e.haveLast = name, idx, true
	return idx, true
}

// pageHead writes a page record's tag and, with an address, the block
// index (unless it repeats) and the page number as a zigzag difference from
// the page after the previous one, which is 0 for a sequential scan.
func (e *Encoder) pageHead(kind byte, index, addr bool, bi uint32, pfn uint64) {
	tag := kind
	if index {
		tag |= flagIndex
	}
	if !addr {
		e.cur.Compressible = append(e.cur.Compressible, tag)
		return
	}
	tag |= flagAddr
	same := e.prevBlock == int64(bi)
	if same {
		tag |= flagSameBlock
	}
	c := append(e.cur.Compressible, tag)
	if !same {
		c = binary.AppendUvarint(c, uint64(bi))
	}
	e.cur.Compressible = binary.AppendUvarint(c, zigzag(pfn-(e.prevPfn+1)))
	e.prevBlock, e.prevPfn = int64(bi), pfn
}

// remember applies a record's state changes, as the decoder will.
func (e *Encoder) remember(page []byte, h xxh3.Uint128, index, addr bool, bi uint32, pfn uint64) {
	if index && e.index.insert(h) {
		e.stats.DedupEvictions++
	}
	if addr {
		mem, evicted := e.cache.put(bi, pfn)
		copy(mem, page)
		if evicted {
			e.stats.DeltaEvictions++
		}
	}
}
