package pagestore

import (
	"encoding/binary"
	"fmt"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/zeebo/xxh3"
)

// An index file is the hashes of a session's pages in data-file order, 16
// bytes each: xxh3-128 high half then low half, big-endian (as in the page
// stage's KNOWN record).
const hashSize = 16

func appendHash(b []byte, h pagestage.PageHash) []byte {
	b = binary.BigEndian.AppendUint64(b, h.Hi)
	return binary.BigEndian.AppendUint64(b, h.Lo)
}

func hashFrom(b []byte) pagestage.PageHash {
	return pagestage.PageHash{Hi: binary.BigEndian.Uint64(b), Lo: binary.BigEndian.Uint64(b[8:])}
}

// indexDigest is the digest a meta file records for an index.
func indexDigest(index []byte) pagestage.PageHash {
	return pagestage.PageHash(xxh3.Hash128(index))
}

// parseIndex checks an index against its meta (length, digest, no page
// recorded twice) and calls fn with each page number and hash. Errors wrap
// ErrCorrupt.
func parseIndex(index []byte, m Meta, fn func(page uint64, h pagestage.PageHash)) error {
	if uint64(len(index)) != m.Pages*hashSize || m.Pages > maxPages {
		return fmt.Errorf("index of %d bytes for %d pages: %w", len(index), m.Pages, ErrCorrupt)
	}
	if d := indexDigest(index); d != m.Digest {
		return fmt.Errorf("index digest %v, meta says %v: %w", d, m.Digest, ErrCorrupt)
	}
	for p := uint64(0); p < m.Pages; p++ {
		fn(p, hashFrom(index[p*hashSize:]))
	}
	return nil
}
