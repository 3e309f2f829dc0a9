package pagestage

import "math"

// The incompressibility test estimates the order-0 entropy of a page from a
// sample of 256 bytes in eight runs spread over the page: random, encrypted
// and already-compressed pages come out near 7.3 bits per byte (the most 256
// samples can show of a uniform source), text, code, page tables and kernel
// structures well below. On real guest pages it agreed with zstd on all but
// a few pages in ten thousand (docs/pagestage.md), for a fraction of a
// microsecond; zstd's own fast path for random data costs about as much, so
// the test must stay this cheap to pay for itself in time, not only in bytes.
const (
	sampleChunks = 8
	sampleChunk  = 32
	sampleSize   = sampleChunks * sampleChunk
	sampleStride = PageSize / sampleChunks
)

// clog2[c] = c*log2(c) in 16.16 fixed point, so that
// entropy = log2(N) - sum(clog2[count])/N needs integer adds only.
var clog2 = func() (t [2 * sampleSize]uint32) {
	for c := 2; c <= sampleSize; c++ {
		t[c] = uint32(math.Round(float64(c) * math.Log2(float64(c)) * (1 << 16)))
	}
	return t
}()

// sampleSum returns sum(c*log2(c)) over the sample's byte counts, 16.16
// fixed point: the lower, the higher the entropy. Two interleaved
// histograms keep runs of one byte value from serialising on one counter.
func sampleSum(page []byte) uint64 {
	var h [2][256]uint16
	for c := 0; c < sampleChunks; c++ {
		for s := page[c*sampleStride : c*sampleStride+sampleChunk]; len(s) >= 2; s = s[2:] {
			h[0][s[0]]++
			h[1][s[1]]++
		}
	}
	var sum0, sum1 uint64
	for v := 0; v < 256; v += 2 {
		// A count is at most sampleSize; the mask only spares a bounds check.
		sum0 += uint64(clog2[(h[0][v]+h[1][v])&(2*sampleSize-1)])
		sum1 += uint64(clog2[(h[0][v+1]+h[1][v+1])&(2*sampleSize-1)])
	}
	return sum0 + sum1
}

// sampleEntropy is the sample's entropy in bits per byte.
func sampleEntropy(page []byte) float64 {
	return math.Log2(sampleSize) - float64(sampleSum(page))/(1<<16)/sampleSize
}

// entropyLimit converts a threshold in bits per byte to the sampleSum below
// which a page counts as incompressible; 0 (never) for bits the sample
// cannot reach.
func entropyLimit(bits float64) uint64 {
	v := (math.Log2(sampleSize) - bits) * sampleSize * (1 << 16)
	if v <= 0 {
		return 0
	}
	return uint64(v)
}
