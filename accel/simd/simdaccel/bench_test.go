package simdaccel

import (
	"bytes"
	"compress/flate"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/dwcp/dwcp/sdk/accel"
)

// The benchmarks run each operation on 256 pages of 4 KiB and report, next
// to MB/s, "x-baseline": how many times faster it is than a plain-Go
// version of the same job timed in the same run (a byte loop for zero
// scan and XOR, stdlib FNV-128a for the 16-byte page digest, stdlib flate
// at BestSpeed for compression).

const (
	benchPage  = 4096
	benchPages = 256
)

// guestLike mimics the reference guest: 56 % zero pages, the rest text-like
// or random, in a fixed pseudo-random order.
func guestLike() []byte {
	r := rand.New(rand.NewPCG(7, 7))
	in := make([]byte, benchPage*benchPages)
	text := bytes.Repeat([]byte("kernel page cache entry 0123456789 "), benchPage/35+1)
	for i := range benchPages {
		p := in[i*benchPage : (i+1)*benchPage]
		switch x := r.IntN(100); {
		case x < 56:
		case x < 80:
			copy(p, text[x:])
		default:
			for j := range p {
				p[j] = byte(r.Uint32())
			}
		}
	}
	return in
}

// vsBaseline runs the plain-Go baseline and then op as sub-benchmarks of
// b, and reports on op the ratio of their times per call.
func vsBaseline(b *testing.B, n int, op func(), baseline func()) {
	var baseNs float64
	b.Run("baseline", func(b *testing.B) {
		b.SetBytes(int64(n))
		for b.Loop() {
			baseline()
		}
		baseNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("accel", func(b *testing.B) {
		b.SetBytes(int64(n))
		b.ReportAllocs()
		for b.Loop() {
			op()
		}
		if baseNs > 0 {
			opNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
			b.ReportMetric(baseNs/opNs, "x-baseline")
		}
	})
}

func benchVariants(b *testing.B, fn func(b *testing.B, a *Accel)) {
	for _, name := range []string{"detected", "generic"} {
		a := variants(b)[name]
		b.Run(name, func(b *testing.B) { fn(b, a) })
	}
}

func BenchmarkZeroScan(b *testing.B) {
	inputs := map[string][]byte{"guestlike": guestLike(), "allzero": make([]byte, benchPage*benchPages)}
	for _, kind := range []string{"guestlike", "allzero"} {
		in := inputs[kind]
		b.Run(kind, func(b *testing.B) {
			benchVariants(b, func(b *testing.B, a *Accel) {
				dst := make([]byte, 0, benchPages)
				vsBaseline(b, len(in), func() {
					dst, _ = a.Run(dst[:0], accel.OpZeroScan, benchPage, in)
				}, func() {
					dst = dst[:0]
					for p := 0; p < len(in); p += benchPage {
						z := byte(1)
						for _, c := range in[p : p+benchPage] {
							if c != 0 {
								z = 0
								break
							}
						}
						dst = append(dst, z)
					}
				})
			})
		})
	}
}

func BenchmarkHashXXH3(b *testing.B) {
	in := guestLike()
	a := variants(b)["detected"]
	dst := make([]byte, 0, 16*benchPages)
	h := fnv.New128a()
	vsBaseline(b, len(in), func() {
		dst, _ = a.Run(dst[:0], accel.OpHashXXH3, benchPage, in)
	}, func() {
		dst = dst[:0]
		for p := 0; p < len(in); p += benchPage {
			h.Reset()
			h.Write(in[p : p+benchPage])
			dst = h.Sum(dst)
		}
	})
}

func BenchmarkXOR(b *testing.B) {
	old := guestLike()
	cur := bytes.Clone(old)
	for i := 0; i < len(cur); i += 97 {
		cur[i]++
	}
	in := append(old, cur...)
	benchVariants(b, func(b *testing.B, a *Accel) {
		dst := make([]byte, 0, len(old))
		vsBaseline(b, len(old), func() {
			dst, _ = a.Run(dst[:0], accel.OpXOR, 0, in)
		}, func() {
			dst = dst[:len(old)]
			for i := range dst {
				dst[i] = in[i] ^ in[len(old)+i]
			}
		})
	})
}

func BenchmarkCompress(b *testing.B) {
	in := guestLike()
	a := variants(b)["detected"]
	dst := make([]byte, 0, 2*len(in))
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed)
	vsBaseline(b, len(in), func() {
		dst, _ = a.Run(dst[:0], accel.OpCompress, LevelFast, in)
	}, func() {
		buf.Reset()
		w.Reset(&buf)
		w.Write(in)
		w.Close()
	})
	b.ReportMetric(float64(len(in))/float64(len(dst)), "ratio")
}

func BenchmarkDecompress(b *testing.B) {
	in := guestLike()
	a := variants(b)["detected"]
	enc, _ := a.Run(nil, accel.OpCompress, LevelFast, in)
	var fbuf bytes.Buffer
	w, _ := flate.NewWriter(&fbuf, flate.BestSpeed)
	w.Write(in)
	w.Close()
	fenc := fbuf.Bytes()
	br := bytes.NewReader(fenc)
	r := flate.NewReader(br)
	dst := make([]byte, 0, len(in))
	vsBaseline(b, len(in), func() {
		dst, _ = a.Run(dst[:0], accel.OpDecompress, int64(len(in)), enc)
	}, func() {
		br.Reset(fenc)
		r.(flate.Resetter).Reset(br, nil)
		dst = dst[:len(in)]
		io.ReadFull(r, dst)
	})
}
