package pagestage

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/qemustream"
	"github.com/klauspost/compress/zstd"
)

// The page stage's gain is measured against what the pipeline would do
// without it: the same stream bytes, cut into the same batches, each
// compressed by zstd (SpeedDefault, one goroutine) as one frame.

const gainBatch = 1 << 20

func newZstd(tb testing.TB) *zstd.Encoder {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { enc.Close() })
	return enc
}

// batchBounds returns the end offsets, in w.raw, of the batches the
// pipeline would cut: at the first item boundary past batchBytes.
func batchBounds(w *workload, batchBytes int) []int {
	var ends []int
	end, start := 0, 0
	for _, it := range w.items {
		end += len(it.bytes)
		if end-start >= batchBytes {
			ends = append(ends, end)
			start = end
		}
	}
	return append(ends, end)
}

type gainResult struct {
	in           int64
	zstdOnly     int64 // bytes, zstd alone
	comp, stored int64 // bytes, page stage then zstd on the compressible section
	// CPU time of each path (thread CPU time on Linux).
	zstdTime, stageTime time.Duration
	stats               Stats
}

func (g gainResult) staged() int64 { return g.comp + g.stored }

func (g gainResult) gain() float64 { return float64(g.zstdOnly) / float64(g.staged()) }

func measureZstdOnly(enc *zstd.Encoder, w *workload, batchBytes int) (int64, time.Duration) {
	var dst []byte
	var n int64
	clk := startCPU()
	start := 0
	for _, end := range batchBounds(w, batchBytes) {
		dst = enc.EncodeAll(w.raw[start:end], dst[:0])
		n += int64(len(dst))
		start = end
	}
	return n, clk.stop()
}

func measureStaged(tb testing.TB, enc *zstd.Encoder, w *workload, opts Options, batchBytes int) (comp, stored int64, d time.Duration, s Stats) {
	e, err := NewEncoder(opts)
	if err != nil {
		tb.Fatal(err)
	}
	var b Batch
	var dst []byte
	clk := startCPU()
	flush := func() {
		if err := e.Flush(&b); err != nil {
			tb.Fatal(err)
		}
		dst = enc.EncodeAll(b.Compressible, dst[:0])
		comp += int64(len(dst))
		stored += int64(len(b.Stored))
	}
	for _, it := range w.items {
		w.feed(e, it)
		if e.Pending() >= batchBytes {
			flush()
		}
	}
	flush()
	return comp, stored, clk.stop(), e.Stats()
}

func measureGain(tb testing.TB, enc *zstd.Encoder, w *workload, opts Options) gainResult {
	g := gainResult{in: int64(len(w.raw))}
	g.zstdOnly, g.zstdTime = measureZstdOnly(enc, w, gainBatch)
	g.comp, g.stored, g.stageTime, g.stats = measureStaged(tb, enc, w, opts, gainBatch)
	return g
}

func reportGain(b *testing.B, g gainResult) {
	b.ReportMetric(float64(g.in)/float64(g.zstdOnly), "zstd-ratio")
	b.ReportMetric(float64(g.in)/float64(g.staged()), "stage+zstd-ratio")
	b.ReportMetric(g.gain(), "gain-x")
	// Above 1: page stage plus zstd is faster than zstd alone.
	b.ReportMetric(float64(g.zstdTime)/float64(g.stageTime), "speed-x")
}

// readStream loads a captured stream as a workload, so timings leave out
// the disk and the parser.
func readStream(tb testing.TB, path string) *workload {
	tb.Helper()
	w := &workload{}
	if fi, err := os.Stat(path); err == nil {
		w.raw = make([]byte, 0, fi.Size())
	}
	type span struct {
		start, end int
		page       bool
		block      string
		addr       uint64
	}
	var spans []span
	forEachItem(tb, path, func(it qemustream.Item) {
		start := len(w.raw)
		w.raw = append(w.raw, it.Bytes...)
		spans = append(spans, span{start, len(w.raw), it.Kind == qemustream.Page, it.Block, it.Addr})
	})
	for _, s := range spans {
		w.items = append(w.items, item{opaque: !s.page, block: s.block, addr: s.addr, bytes: w.raw[s.start:s.end:s.end]})
		if s.page {
			w.pages++
		}
	}
	return w
}

func benchSynthetic() *workload { return genWorkload(benchWorkload) }

// BenchmarkGain: bytes and time of page stage + zstd against zstd alone on
// the synthetic multi-pass workload.
func BenchmarkGain(b *testing.B) {
	w := benchSynthetic()
	enc := newZstd(b)
	b.SetBytes(int64(len(w.raw)))
	b.ResetTimer()
	var g gainResult
	for range b.N {
		g = measureGain(b, enc, w, Options{})
	}
	reportGain(b, g)
}

func BenchmarkGainRealStreams(b *testing.B) {
	for _, path := range realStreams(b) {
		b.Run(filepath.Base(path), func(b *testing.B) {
			w := readStream(b, path)
			enc := newZstd(b)
			b.SetBytes(int64(len(w.raw)))
			b.ResetTimer()
			var g gainResult
			for range b.N {
				g = measureGain(b, enc, w, Options{})
			}
			reportGain(b, g)
		})
	}
}

// BenchmarkEncode and BenchmarkDecode report throughput (MB/s of stream)
// and, as the same-run baseline, their CPU time as a fraction of what zstd
// alone (SpeedDefault) takes on the same bytes. Each op is a whole session,
// so B/op is the session's memory (caches, ring, buffers), not per page.
func BenchmarkEncode(b *testing.B) {
	w := benchSynthetic()
	_, zt := measureZstdOnly(newZstd(b), w, gainBatch)
	b.SetBytes(int64(len(w.raw)))
	b.ReportAllocs()
	b.ResetTimer()
	clk := startCPU()
	for range b.N {
		encodeOnce(b, w)
	}
	b.ReportMetric(float64(clk.stop())/float64(b.N)/float64(zt), "x-zstd-cpu")
}

func encodeOnce(b *testing.B, w *workload) {
	e, err := NewEncoder(Options{})
	if err != nil {
		b.Fatal(err)
	}
	var batch Batch
	for _, it := range w.items {
		w.feed(e, it)
		if e.Pending() >= gainBatch {
			_ = e.Flush(&batch)
		}
	}
	if err := e.Flush(&batch); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkDecode(b *testing.B) {
	w := benchSynthetic()
	batches, _ := encodeAll(b, w, Options{}, gainBatch)
	_, zt := measureZstdOnly(newZstd(b), w, gainBatch)
	b.SetBytes(int64(len(w.raw)))
	b.ReportAllocs()
	out := make([]byte, 0, 2*gainBatch)
	b.ResetTimer()
	clk := startCPU()
	for range b.N {
		d := NewDecoder(DecoderOptions{})
		for _, batch := range batches {
			var err error
			if out, err = d.Decode(out[:0], batch); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(clk.stop())/float64(b.N)/float64(zt), "x-zstd-cpu")
}

// Per-page primitives, against a memcpy of the page as baseline.
func BenchmarkPrimitives(b *testing.B) {
	var g gen
	g.r = newRand(9)
	page, old, dst := make([]byte, PageSize), make([]byte, PageSize), make([]byte, PageSize)
	g.fillText(page)
	copy(old, page)
	old[100] ^= 1
	b.Run("memcpy", func(b *testing.B) {
		b.SetBytes(PageSize)
		for range b.N {
			copy(dst, page)
		}
	})
	b.Run("sampleSum", func(b *testing.B) {
		b.SetBytes(PageSize)
		for range b.N {
			_ = sampleSum(page)
		}
	})
	b.Run("appendDelta", func(b *testing.B) {
		b.SetBytes(PageSize)
		spans := make([]byte, 0, 2*PageSize)
		for range b.N {
			spans, _ = appendDelta(spans[:0], old, page, DefaultDeltaMaxBytes)
		}
	})
}
