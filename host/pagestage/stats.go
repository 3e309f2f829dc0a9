package pagestage

import "fmt"

// PageKind says how a page travelled.
type PageKind uint8

// Page kinds, in the encoder's order of preference.
const (
	PageZero   PageKind = iota // zero-page run record
	PageDup                    // reference into the dedup ring
	PageKnown                  // reference to a page the destination holds
	PageDelta                  // XOR spans against the cached version
	PageStored                 // whole, in the stored section
	PageFull                   // whole, in the compressible section
	PageOdd                    // not PageSize bytes: sent as opaque bytes (encoder only)
	NumPageKinds
)

var pageKindNames = [NumPageKinds]string{"zero", "dup", "known", "delta", "stored", "full", "odd"}

func (k PageKind) String() string {
	if k < NumPageKinds {
		return pageKindNames[k]
	}
	return fmt.Sprintf("PageKind(%d)", uint8(k))
}

// Stats counts what an Encoder produced or a Decoder consumed. On the
// decoder, the "in" byte counts are the bytes it rebuilt.
type Stats struct {
	Batches uint64
	// Pages counts pages by how they travelled.
	Pages [NumPageKinds]uint64
	// OpaqueBytes and PageBytes are the stream bytes the batches stand for:
	// opaque items (and odd-sized pages) and PageSize pages.
	OpaqueBytes uint64
	PageBytes   uint64
	// CompressibleBytes and StoredBytes are the encoded sections, before
	// any codec.
	CompressibleBytes uint64
	StoredBytes       uint64
	// DeltaBytes is the span bytes of all delta records.
	DeltaBytes uint64
	// DeltaRejected counts pages with a cached base whose delta was over
	// the limit, so they were sent whole (encoder only).
	DeltaRejected uint64
	// DedupEvictions and DeltaEvictions count entries pushed out of the
	// dedup ring and the delta cache.
	DedupEvictions uint64
	DeltaEvictions uint64
}

// BytesIn is the stream bytes the batches stand for.
func (s Stats) BytesIn() uint64 { return s.OpaqueBytes + s.PageBytes }

// BytesOut is the encoded size of the batches, both sections.
func (s Stats) BytesOut() uint64 { return s.CompressibleBytes + s.StoredBytes }

// DeltaSavings is the bytes delta records saved against sending those
// pages whole (record headers not counted).
func (s Stats) DeltaSavings() uint64 { return s.Pages[PageDelta]*PageSize - s.DeltaBytes }

func (s Stats) String() string {
	return fmt.Sprintf("batches %d; pages zero %d dup %d known %d delta %d stored %d full %d odd %d; "+
		"in %d B; out %d B (compressible %d, stored %d); delta %d B saved %d B, rejected %d; evictions dedup %d delta %d",
		s.Batches, s.Pages[PageZero], s.Pages[PageDup], s.Pages[PageKnown], s.Pages[PageDelta],
		s.Pages[PageStored], s.Pages[PageFull], s.Pages[PageOdd], s.BytesIn(), s.BytesOut(),
		s.CompressibleBytes, s.StoredBytes, s.DeltaBytes, s.DeltaSavings(), s.DeltaRejected,
		s.DedupEvictions, s.DeltaEvictions)
}
