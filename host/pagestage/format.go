package pagestage

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PageSize is the only page size the format carries: x86's target page.
// Pages of any other length are passed through as opaque bytes.
const PageSize = 4096

// Batch header: fixed width, so the encoder can reserve it before it knows
// the checksum and lengths, and fill it in at Flush without moving data.
//
//	[0]      format version (1)
//	[1]      flags (0; reserved)
//	[2:6]    decoded length, u32 LE
//	[6:10]   stored section length, u32 LE
//	[10:18]  batch sequence number, u64 LE, 0 for the first batch of a session
//	[18:26]  xxh3-64 of the decoded bytes, u64 LE
const (
	formatVersion = 1
	headerSize    = 26
)

// Record tags: the low five bits are the kind, the high three are flags that
// only page records may carry.
const (
	kindParams = 1 // session parameters; first record of batch 0 only
	kindBlock  = 2 // define the next block index: uvarint len, name
	kindOpaque = 3 // uvarint len (>0), bytes
	kindZero   = 4 // uvarint count (>0) of zero pages
	kindFull   = 5 // page bytes follow in this section
	kindStored = 6 // page bytes are the next PageSize bytes of the stored section
	kindDup    = 7 // uvarint distance back in the dedup ring (1 = newest)
	kindDelta  = 8 // uvarint len, then XOR spans against the cached base
	kindKnown  = 9 // 16-byte content hash the destination's KnownStore holds
	numKinds   = 10

	kindMask = 0x1f

	// flagIndex: the page's content is appended to the dedup ring.
	flagIndex = 0x80
	// flagAddr: an address follows the tag and the page's content becomes
	// the delta cache entry for it.
	flagAddr = 0x40
	// flagSameBlock: the address omits its block index because it is the
	// block of the previous addressed record of this batch.
	flagSameBlock = 0x20
)

// Bounds both ends enforce; far above what QEMU produces.
const (
	maxBlocks    = 1024 // RAM blocks in one session (qemustream's own bound)
	maxBlockName = 255  // QEMU's idstr is a counted string with a u8 length
	maxWays      = 16
	maxEntries   = 1 << 24 // dedup ring entries (64 GiB of pages)
)

// Sentinel errors that callers branch on with errors.Is.
var (
	// ErrCorrupt marks a batch that no encoder writes: bad header, unknown
	// record, a length that runs past its section, a flag where it cannot be.
	ErrCorrupt = errors.New("corrupt page-stage batch")
	// ErrUnknownBase marks a duplicate, delta or known-page record whose
	// base the decoder does not hold: its state has left the encoder's.
	ErrUnknownBase = errors.New("page-stage reference to a page the decoder does not hold")
	// ErrChecksum marks a batch that decoded to bytes other than the ones
	// the encoder was given: a desync of the mirrored state or corruption
	// that the record structure did not reveal.
	ErrChecksum = errors.New("page-stage batch checksum mismatch")
	// ErrOutOfOrder marks a batch applied out of sequence.
	ErrOutOfOrder = errors.New("page-stage batch out of order")
	// ErrLimit marks a batch or session that needs more memory than the
	// decoder's options allow, or an encoder batch too large to describe.
	ErrLimit = errors.New("page-stage limit exceeded")
	// ErrFailed is returned by a decoder that already failed mid-batch: its
	// mirrored state can no longer be trusted.
	ErrFailed = errors.New("page-stage decoder failed earlier")
)

// Batch is one encoded batch: Compressible goes through the codec, Stored
// must not (it holds pages that looked incompressible). Both are needed to
// decode it.
type Batch struct {
	Compressible []byte
	Stored       []byte
}

// Len is the encoded size of the batch before any codec.
func (b *Batch) Len() int { return len(b.Compressible) + len(b.Stored) }

// PageHash is the xxh3-128 of a page's content, the name by which the
// known-pages hooks refer to it.
type PageHash struct{ Hi, Lo uint64 }

func (h PageHash) String() string { return fmt.Sprintf("%016x%016x", h.Hi, h.Lo) }

type header struct {
	version    byte
	flags      byte
	decodedLen uint32
	storedLen  uint32
	seq        uint64
	sum        uint64
}

func putHeader(b []byte, h header) {
	b[0] = h.version
	b[1] = h.flags
	binary.LittleEndian.PutUint32(b[2:], h.decodedLen)
	binary.LittleEndian.PutUint32(b[6:], h.storedLen)
	binary.LittleEndian.PutUint64(b[10:], h.seq)
	binary.LittleEndian.PutUint64(b[18:], h.sum)
}

func parseHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, fmt.Errorf("pagestage: batch header: %d bytes, need %d: %w", len(b), headerSize, ErrCorrupt)
	}
	h := header{
		version:    b[0],
		flags:      b[1],
		decodedLen: binary.LittleEndian.Uint32(b[2:]),
		storedLen:  binary.LittleEndian.Uint32(b[6:]),
		seq:        binary.LittleEndian.Uint64(b[10:]),
		sum:        binary.LittleEndian.Uint64(b[18:]),
	}
	if h.version != formatVersion {
		return h, fmt.Errorf("pagestage: batch header: format version %d, want %d: %w", h.version, formatVersion, ErrCorrupt)
	}
	if h.flags != 0 {
		return h, fmt.Errorf("pagestage: batch header: reserved flags %#x set: %w", h.flags, ErrCorrupt)
	}
	return h, nil
}

// zigzag maps a two's-complement difference onto small unsigned numbers, so
// an address just before or after the expected one costs one byte.
func zigzag(v uint64) uint64 { return v<<1 ^ uint64(int64(v)>>63) }

func unzigzag(u uint64) uint64 { return u>>1 ^ -(u & 1) }

// pageNumber is the delta cache key of an address. An unaligned address only
// shares a key with its page's other addresses, which costs at most a wasted
// delta attempt, never correctness: both ends key the same way.
func pageNumber(addr uint64) uint64 { return addr / PageSize }
