package pagestage

import "math"

// The incompressibility test estimates the order-0 entropy of a page from a
// sample: random, encrypted and already-compressed pages sit near 8 bits per
// byte, while text, code, page tables and kernel structures sit well below.
// It costs well under a microsecond, against the tens of microseconds a
// general-purpose codec spends failing to shrink a random page.
const (
	sampleChunks = 8
	sampleChunk  = 128 // contiguous bytes per chunk, spread over the page
	sampleSize   = sampleChunks * sampleChunk
	sampleStride = PageSize / sampleChunks
)

// clog2[c] = c*log2(c), so the sample's entropy is
// log2(N) - sum(clog2[count])/N without a logarithm per page.
var clog2 = func() (t [sampleSize + 1]float64) {
	for c := 2; c <= sampleSize; c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return t
}()

// sampleEntropy returns the entropy, in bits per byte, of the sampled bytes
// of a page. Four interleaved histograms keep consecutive increments of the
// same byte value from waiting on each other.
func sampleEntropy(page []byte) float64 {
	var h [4][256]uint16
	for c := 0; c < sampleChunks; c++ {
		s := page[c*sampleStride : c*sampleStride+sampleChunk]
		for i := 0; i+4 <= len(s); i += 4 {
			h[0][s[i]]++
			h[1][s[i+1]]++
			h[2][s[i+2]]++
			h[3][s[i+3]]++
		}
	}
	var sum float64
	for v := 0; v < 256; v++ {
		sum += clog2[h[0][v]+h[1][v]+h[2][v]+h[3][v]]
	}
	return math.Log2(sampleSize) - sum/sampleSize
}
