package simdaccel

import (
	"bytes"
	"encoding/binary"
)

// zeroPage is compared against; 4 KiB keeps it resident in L1 and covers
// the common page size in one call.
var zeroPage [4096]byte

// isZeroMemequal lets the runtime's memequal do the work: it compares 64
// bytes per step with vector registers and stops at the first difference,
// which for non-zero pages is usually in the first cache line.
func isZeroMemequal(p []byte) bool {
	for len(p) > len(zeroPage) {
		if !bytes.Equal(p[:len(zeroPage)], zeroPage[:]) {
			return false
		}
		p = p[len(zeroPage):]
	}
	return bytes.Equal(p, zeroPage[:len(p)])
}

// isZeroWords is the pure-Go fallback: eight words ORed per step so that
// the loop branches once per cache line.
func isZeroWords(p []byte) bool {
	for len(p) >= 64 {
		w := binary.LittleEndian.Uint64(p) | binary.LittleEndian.Uint64(p[8:]) |
			binary.LittleEndian.Uint64(p[16:]) | binary.LittleEndian.Uint64(p[24:]) |
			binary.LittleEndian.Uint64(p[32:]) | binary.LittleEndian.Uint64(p[40:]) |
			binary.LittleEndian.Uint64(p[48:]) | binary.LittleEndian.Uint64(p[56:])
		if w != 0 {
			return false
		}
		p = p[64:]
	}
	for len(p) >= 8 {
		if binary.LittleEndian.Uint64(p) != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
