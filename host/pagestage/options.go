package pagestage

import (
	"fmt"
	"strings"
)

// Technique names one of the encoder's ways to shrink a page.
type Technique uint8

// Techniques, in the order the encoder tries them.
const (
	// Zero sends an all-zero page as a counted run record.
	Zero Technique = 1 << iota
	// Dedup sends a page whose content is in the dedup ring as a reference.
	Dedup
	// Known sends a page the destination already holds (Options.Known) as
	// its content hash.
	Known
	// Delta sends a re-sent page as XOR spans against its cached version.
	Delta
	// Incompressible moves a page that looks incompressible to the stored
	// section.
	Incompressible

	// AllTechniques is every technique; Options.Disabled = AllTechniques
	// makes the stage a plain framer of full pages (datacenter mode).
	AllTechniques = Zero | Dedup | Known | Delta | Incompressible
)

var techniqueNames = [...]string{"zero", "dedup", "known", "delta", "incompressible"}

func (t Technique) String() string {
	if t == 0 {
		return "none"
	}
	var parts []string
	for i, n := range techniqueNames {
		if t&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if rest := t &^ AllTechniques; rest != 0 {
		parts = append(parts, fmt.Sprintf("%#x", uint8(rest)))
	}
	return strings.Join(parts, "|")
}

// Defaults. DefaultDeltaMaxBytes and DefaultIncompressibleBits were chosen by
// measurement on real guest streams; docs/pagestage.md has the numbers.
const (
	// DefaultDedupEntries bounds the dedup ring: 64 MiB of page contents
	// held by the decoder, 32 bytes per entry on the encoder.
	DefaultDedupEntries = 16384
	// DefaultDeltaCacheBytes matches QEMU's default xbzrle-cache-size; both
	// ends hold this much.
	DefaultDeltaCacheBytes = 64 << 20
	// DefaultDeltaMaxBytes is the largest delta worth sending instead of
	// the page.
	DefaultDeltaMaxBytes = 1024
	// DefaultIncompressibleBits is the sampled byte entropy above which a
	// page goes to the stored section.
	DefaultIncompressibleBits = 6.8
	// DefaultMaxBatchBytes is the largest decoded batch a decoder accepts
	// unless told otherwise.
	DefaultMaxBatchBytes = 64 << 20
	// DefaultMaxDedupEntries and DefaultMaxDeltaCacheBytes bound what a
	// session's parameters may make a decoder hold: four times the encoder
	// defaults.
	DefaultMaxDedupEntries    = 4 * DefaultDedupEntries
	DefaultMaxDeltaCacheBytes = 4 * DefaultDeltaCacheBytes

	// deltaWays is the associativity of the delta cache.
	deltaWays = 4
)

// Options configure an Encoder. The zero value turns every technique on with
// the default sizes.
type Options struct {
	// Disabled lists techniques the encoder must not use. SetDisabled
	// changes it between pages.
	Disabled Technique
	// DedupEntries is the number of page contents the dedup ring holds (the
	// decoder keeps each one: 4 KiB a page). 0 means DefaultDedupEntries; a
	// negative value gives the session no ring, so Dedup stays off for good.
	DedupEntries int
	// DeltaCacheBytes is the size of the delta cache, on each end, like
	// QEMU's xbzrle-cache-size. 0 means DefaultDeltaCacheBytes; a negative
	// value, or less than one page, gives the session no cache.
	DeltaCacheBytes int64
	// DeltaMaxBytes is the largest encoded delta sent instead of the full
	// page. 0 means DefaultDeltaMaxBytes.
	DeltaMaxBytes int
	// IncompressibleBits is the byte entropy, in bits per byte, of a
	// 256-byte sample of the page above which the page goes to the stored
	// section. A uniform random page samples at about 7.3 (the estimate is
	// biased low at this sample size), text at 4-5. 0 means
	// DefaultIncompressibleBits; 8 or more never stores a page.
	IncompressibleBits float64
	// Known, when set, tells the encoder which pages the destination
	// already holds.
	Known KnownSource
	// Observer, when set, sees every page the session carries other than
	// zero runs and dedup references (see PageObserver).
	Observer PageObserver
}

func (o Options) withDefaults() (Options, error) {
	switch {
	case o.DedupEntries == 0:
		o.DedupEntries = DefaultDedupEntries
	case o.DedupEntries < 0:
		o.DedupEntries = 0
	case o.DedupEntries > maxEntries:
		return o, fmt.Errorf("pagestage: options: DedupEntries %d over %d: %w", o.DedupEntries, maxEntries, ErrLimit)
	}
	switch {
	case o.DeltaCacheBytes == 0:
		o.DeltaCacheBytes = DefaultDeltaCacheBytes
	case o.DeltaCacheBytes < 0:
		o.DeltaCacheBytes = 0
	case o.DeltaCacheBytes/PageSize > maxEntries:
		return o, fmt.Errorf("pagestage: options: DeltaCacheBytes %d over %d pages: %w", o.DeltaCacheBytes, maxEntries, ErrLimit)
	}
	switch {
	case o.DeltaMaxBytes == 0:
		o.DeltaMaxBytes = DefaultDeltaMaxBytes
	case o.DeltaMaxBytes < 0 || o.DeltaMaxBytes >= PageSize:
		return o, fmt.Errorf("pagestage: options: DeltaMaxBytes %d outside 1..%d", o.DeltaMaxBytes, PageSize-1)
	}
	switch {
	case o.IncompressibleBits == 0:
		o.IncompressibleBits = DefaultIncompressibleBits
	case !(o.IncompressibleBits > 0): // also rejects NaN
		return o, fmt.Errorf("pagestage: options: IncompressibleBits %v is not positive", o.IncompressibleBits)
	}
	if o.Disabled&^AllTechniques != 0 {
		return o, fmt.Errorf("pagestage: options: unknown techniques %v disabled", o.Disabled)
	}
	return o, nil
}

// deltaGeometry splits a cache of the given size into sets of deltaWays.
func deltaGeometry(bytes int64) (sets, ways int) {
	entries := int(bytes / PageSize)
	if entries <= 0 {
		return 0, 0
	}
	ways = min(deltaWays, entries)
	return entries / ways, ways
}

// DecoderOptions bound what a Decoder accepts. The zero value uses the
// defaults. The session's own sizes (ring entries, cache geometry) come from
// the encoder, in the first batch.
type DecoderOptions struct {
	// MaxBatchBytes bounds a batch's decoded length. 0 means
	// DefaultMaxBatchBytes.
	MaxBatchBytes int
	// MaxDedupEntries bounds the dedup ring a session may ask for. 0 means
	// DefaultMaxDedupEntries.
	MaxDedupEntries int
	// MaxDeltaCacheBytes bounds the delta cache a session may ask for. 0
	// means DefaultMaxDeltaCacheBytes.
	MaxDeltaCacheBytes int64
	// Known resolves known-page records; without it they are errors.
	Known KnownStore
	// Observer, when set, sees every page rebuilt from a FULL, STORED,
	// DELTA or KNOWN record (see PageObserver).
	Observer PageObserver
}

func (o DecoderOptions) withDefaults() DecoderOptions {
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if o.MaxDedupEntries <= 0 {
		o.MaxDedupEntries = DefaultMaxDedupEntries
	}
	if o.MaxDeltaCacheBytes <= 0 {
		o.MaxDeltaCacheBytes = DefaultMaxDeltaCacheBytes
	}
	return o
}
