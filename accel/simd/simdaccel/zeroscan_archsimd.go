//go:build goexperiment.simd && amd64

package simdaccel

import "simd/archsimd"

// archsimdZero ORs four 64-byte vectors per step and tests the result
// once: one stream of loads instead of memequal's two, and one branch per
// 256 bytes. Only built with GOEXPERIMENT=simd; selected only when the CPU
// has AVX-512 (selectZeroScan checks).
var archsimdZero = isZeroAVX512

func isZeroAVX512(p []byte) bool {
	var zero archsimd.Uint8x64
	for len(p) >= 256 {
		a := archsimd.LoadUint8x64Slice(p)
		b := archsimd.LoadUint8x64Slice(p[64:])
		c := archsimd.LoadUint8x64Slice(p[128:])
		d := archsimd.LoadUint8x64Slice(p[192:])
		if a.Or(b).Or(c.Or(d)).NotEqual(zero).ToBits() != 0 {
			return false
		}
		p = p[256:]
	}
	return isZeroWords(p)
}
