package simdaccel

import (
	"crypto/subtle"
	"encoding/binary"
)

// xorSubtle writes a XOR b to dst; all three have the same length.
func xorSubtle(dst, a, b []byte) { subtle.XORBytes(dst, a, b) }

// xorWords is the pure-Go fallback, four words per step.
func xorWords(dst, a, b []byte) {
	dst, b = dst[:len(a)], b[:len(a)]
	for len(a) >= 32 {
		binary.LittleEndian.PutUint64(dst, binary.LittleEndian.Uint64(a)^binary.LittleEndian.Uint64(b))
		binary.LittleEndian.PutUint64(dst[8:], binary.LittleEndian.Uint64(a[8:])^binary.LittleEndian.Uint64(b[8:]))
		binary.LittleEndian.PutUint64(dst[16:], binary.LittleEndian.Uint64(a[16:])^binary.LittleEndian.Uint64(b[16:]))
		binary.LittleEndian.PutUint64(dst[24:], binary.LittleEndian.Uint64(a[24:])^binary.LittleEndian.Uint64(b[24:]))
		dst, a, b = dst[32:], a[32:], b[32:]
	}
	for i := range a {
		dst[i] = a[i] ^ b[i]
	}
}
