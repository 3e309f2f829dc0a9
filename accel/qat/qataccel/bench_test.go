package qataccel

import (
	"bytes"
	"compress/flate"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/dwcp/dwcp/sdk/accel"
)

// The emulated plugin is compress/flate behind the accelerator interface,
// so its baseline is compress/flate called directly (a new writer or
// reader per block, as naive code would): "x-baseline" shows what the
// pooling and the append-style API save, never a hardware speed-up.

const (
	benchPage  = 4096
	benchPages = 256
)

func pages() []byte {
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
			b.ReportMetric(baseNs/(float64(b.Elapsed().Nanoseconds())/float64(b.N)), "x-baseline")
		}
	})
}

// BenchmarkCompress compresses each 4 KiB page as its own block, the unit
// the page stage would hand to an offload engine.
func BenchmarkCompress(b *testing.B) {
	in := pages()
	a := New(Config{Emulate: true})
	dst := make([]byte, 0, 2*len(in))
	var buf bytes.Buffer
	vsBaseline(b, len(in), func() {
		dst = dst[:0]
		for p := 0; p < len(in); p += benchPage {
			dst, _ = a.Run(dst, accel.OpCompress, 1, in[p:p+benchPage])
		}
	}, func() {
		buf.Reset()
		for p := 0; p < len(in); p += benchPage {
			w, _ := flate.NewWriter(&buf, 1)
			w.Write(in[p : p+benchPage])
			w.Close()
		}
	})
}

func BenchmarkDecompress(b *testing.B) {
	in := pages()
	a := New(Config{Emulate: true})
	var blocks [][]byte
	for p := 0; p < len(in); p += benchPage {
		enc, _ := a.Run(nil, accel.OpCompress, 1, in[p:p+benchPage])
		blocks = append(blocks, enc)
	}
	dst := make([]byte, 0, len(in))
	vsBaseline(b, len(in), func() {
		dst = dst[:0]
		for _, blk := range blocks {
			dst, _ = a.Run(dst, accel.OpDecompress, benchPage, blk)
		}
	}, func() {
		dst = dst[:0]
		for _, blk := range blocks {
			r := flate.NewReader(bytes.NewReader(blk))
			n, _ := io.ReadFull(r, dst[len(dst):len(dst)+benchPage])
			dst = dst[:len(dst)+n]
		}
	})
}
