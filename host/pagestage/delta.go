package pagestage

import (
	"bytes"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"math/bits"
)

// A delta is a sequence of spans, each: uvarint skip (bytes unchanged since
// the previous span's end), uvarint n (>0), then n bytes that are the XOR of
// old and new content. QEMU's XBZRLE works the same way; unlike it, spans
// are found a word at a time and short equal gaps are folded into a span.

// mergeGap is the longest run of equal bytes kept inside a span: splitting
// there would cost two varint bytes to save at most this many.
const mergeGap = 2

// skipBlock is the stretch appendDelta compares in one go.
const skipBlock = 256

func load64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// appendDelta appends the spans that turn old into cur (both PageSize bytes)
// to dst. It gives up and reports false as soon as the spans pass limit
// bytes, so a rewritten page costs one scan and no more.
func appendDelta(dst, old, cur []byte, limit int) ([]byte, bool) {
	old, cur = old[:PageSize], cur[:PageSize]
	start := len(dst)
	prevEnd := 0
	ps, pe := -1, -1 // pending span, emitted when the next one is too far
	for i := 0; i < PageSize; {
		// Unchanged stretches are skipped with the vectorised compare
		// first, a word at a time only near a change.
		if i%skipBlock == 0 && bytes.Equal(old[i:i+skipBlock], cur[i:i+skipBlock]) {
			i += skipBlock
			continue
		}
		if load64(old, i) == load64(cur, i) {
			i += 8
			continue
		}
		s := i + bits.TrailingZeros64(load64(old, i)^load64(cur, i))/8
		j := i + 8
		for j < PageSize && load64(old, j) != load64(cur, j) {
			j += 8
		}
		e := j - bits.LeadingZeros64(load64(old, j-8)^load64(cur, j-8))/8
		i = j
		if ps >= 0 && s-pe <= mergeGap {
			pe = e
			continue
		}
		if ps >= 0 {
			dst = appendSpan(dst, old, cur, prevEnd, ps, pe)
			prevEnd = pe
			if len(dst)-start > limit {
				return dst, false
			}
		}
		ps, pe = s, e
	}
	if ps >= 0 {
		dst = appendSpan(dst, old, cur, prevEnd, ps, pe)
	}
	return dst, len(dst)-start <= limit
}

func appendSpan(dst, old, cur []byte, prevEnd, s, e int) []byte {
	dst = binary.AppendUvarint(dst, uint64(s-prevEnd))
	dst = binary.AppendUvarint(dst, uint64(e-s))
	n := len(dst)
	dst = append(dst, cur[s:e]...)
	subtle.XORBytes(dst[n:], dst[n:], old[s:e])
	return dst
}

// applyDelta XORs the spans into page (PageSize bytes) in place.
func applyDelta(page, spans []byte) error {
	pos := 0
	for len(spans) > 0 {
		skip, n := binary.Uvarint(spans)
		if n <= 0 {
			return fmt.Errorf("delta span skip: bad uvarint")
		}
		spans = spans[n:]
		ln, n := binary.Uvarint(spans)
		if n <= 0 {
			return fmt.Errorf("delta span length: bad uvarint")
		}
		spans = spans[n:]
		if ln == 0 {
			return fmt.Errorf("delta span of length 0")
		}
		if skip > uint64(PageSize-pos) || ln > uint64(PageSize-pos)-skip {
			return fmt.Errorf("delta span at %d+%d, length %d, runs past the page", pos, skip, ln)
		}
		if ln > uint64(len(spans)) {
			return fmt.Errorf("delta span length %d, %d bytes left", ln, len(spans))
		}
		pos += int(skip)
		subtle.XORBytes(page[pos:pos+int(ln)], page[pos:pos+int(ln)], spans[:ln])
		pos += int(ln)
		spans = spans[ln:]
	}
	return nil
}
