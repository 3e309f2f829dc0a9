package simdaccel

import (
	"runtime"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/cpu"
)

// cpuFeatures is what the path selection looks at. Two sources on purpose:
// golang.org/x/sys/cpu mirrors the checks of the Go runtime (whose
// memequal and XOR assembly we call), and klauspost/cpuid is what
// zeebo/xxh3 consults, so that Features names what really runs.
type cpuFeatures struct {
	arch string
	// Runtime view (x/sys/cpu, same rules as internal/cpu).
	sse2, avx2 bool
	// avx512 is the F+CD+BW+DQ+VL bundle that simd/archsimd requires.
	avx512 bool
	asimd  bool
	// zeebo/xxh3's view (klauspost/cpuid).
	xxh3AVX512, xxh3AVX2, xxh3SSE2 bool
}

func detect() cpuFeatures {
	return cpuFeatures{
		arch:       runtime.GOARCH,
		sse2:       cpu.X86.HasSSE2,
		avx2:       cpu.X86.HasAVX2,
		avx512:     cpu.X86.HasAVX512F && cpu.X86.HasAVX512CD && cpu.X86.HasAVX512BW && cpu.X86.HasAVX512DQ && cpu.X86.HasAVX512VL,
		asimd:      cpu.ARM64.HasASIMD,
		xxh3AVX512: cpuid.CPU.Has(cpuid.AVX512F),
		xxh3AVX2:   cpuid.CPU.Has(cpuid.AVX2),
		xxh3SSE2:   cpuid.CPU.Has(cpuid.SSE2),
	}
}

// path is one implementation choice: its name, the CPU features it uses,
// and the function (nil for the hash, which zeebo/xxh3 dispatches itself).
type path[F any] struct {
	name     string
	features []string
	fn       F
}

// selectZeroScan prefers, in order: an AVX-512 OR-reduction (only in
// builds with GOEXPERIMENT=simd), the runtime's memequal against a zero
// page (AVX2 or SSE2 on amd64, NEON on arm64), and a pure-Go word loop.
// Measured on the reference Zen 5 machine with 4 KiB pages in cache: the
// AVX-512 loop is 1.4-1.6x memequal, which is 1.3-1.7x the word loop.
func selectZeroScan(f cpuFeatures, generic bool) path[func([]byte) bool] {
	if generic {
		return path[func([]byte) bool]{name: "word64-go", fn: isZeroWords}
	}
	if archsimdZero != nil && f.arch == "amd64" && f.avx512 {
		return path[func([]byte) bool]{name: "archsimd-avx512", features: []string{"avx512bw"}, fn: archsimdZero}
	}
	switch {
	case f.arch == "amd64" && f.avx2:
		return path[func([]byte) bool]{name: "memequal-avx2", features: []string{"avx2"}, fn: isZeroMemequal}
	case f.arch == "amd64" && f.sse2:
		return path[func([]byte) bool]{name: "memequal-sse2", features: []string{"sse2"}, fn: isZeroMemequal}
	case f.arch == "arm64" && f.asimd:
		return path[func([]byte) bool]{name: "memequal-neon", features: []string{"asimd"}, fn: isZeroMemequal}
	}
	// Other architectures still have an assembly memequal in the runtime,
	// word-wide but not vector; it beats the Go loop, so it stays.
	return path[func([]byte) bool]{name: "memequal", fn: isZeroMemequal}
}

// selectXOR prefers crypto/subtle.XORBytes, whose assembly is SSE2 on
// amd64 and NEON on arm64 (measured 3.5-4x the pure-Go word loop; an
// AVX-512 archsimd loop measured the same as SSE2 because XOR of pages is
// bound by memory, not by the ALU, so it is not offered).
func selectXOR(f cpuFeatures, generic bool) path[func(dst, a, b []byte)] {
	if generic {
		return path[func(dst, a, b []byte)]{name: "word64-go", fn: xorWords}
	}
	switch {
	case f.arch == "amd64" && f.sse2:
		return path[func(dst, a, b []byte)]{name: "subtle-sse2", features: []string{"sse2"}, fn: xorSubtle}
	case f.arch == "arm64" && f.asimd:
		return path[func(dst, a, b []byte)]{name: "subtle-neon", features: []string{"asimd"}, fn: xorSubtle}
	}
	return path[func(dst, a, b []byte)]{name: "subtle", fn: xorSubtle}
}

// hashPath reports which accumulator zeebo/xxh3 runs for pages over 240
// bytes; it chooses by itself, from the same CPUID bits.
func hashPath(f cpuFeatures) path[struct{}] {
	switch {
	case f.arch == "amd64" && f.xxh3AVX512 && f.xxh3AVX2:
		// AVX-512 from 1 KiB up, AVX2 below.
		return path[struct{}]{name: "xxh3-avx512", features: []string{"avx2", "avx512f"}}
	case f.arch == "amd64" && f.xxh3AVX512:
		return path[struct{}]{name: "xxh3-avx512", features: []string{"avx512f"}}
	case f.arch == "amd64" && f.xxh3AVX2:
		return path[struct{}]{name: "xxh3-avx2", features: []string{"avx2"}}
	case f.arch == "amd64" && f.xxh3SSE2:
		return path[struct{}]{name: "xxh3-sse2", features: []string{"sse2"}}
	case f.arch == "arm64":
		return path[struct{}]{name: "xxh3-neon", features: []string{"asimd"}}
	}
	return path[struct{}]{name: "xxh3-scalar"}
}
