//go:build !(goexperiment.simd && amd64)

package simdaccel

// archsimdZero is nil without GOEXPERIMENT=simd: the stable toolchain has
// no portable vector API, and the runtime's memequal is the next best.
var archsimdZero func([]byte) bool
