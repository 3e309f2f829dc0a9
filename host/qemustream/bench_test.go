package qemustream

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

var (
	benchOnce   sync.Once
	benchStream []byte
)

// bigStream is a 256 MiB-equivalent precopy stream: 65536 page records
// (about a quarter of them ZERO), in PARTs of 512 records, then device
// sections, EOF and VMDESCRIPTION. Page contents come from a small pool so
// that generating it costs little more than a copy.
func bigStream() []byte {
	benchOnce.Do(func() {
		const pages = 65536
		rng := rand.New(rand.NewPCG(1, 2))
		pool := make([][]byte, 64)
		for i := range pool {
			pool[i] = make([]byte, 4096)
			streamtest.FillPage(pool[i], streamtest.Content(1+i%4), rng)
		}
		b := streamtest.New(streamtest.Options{NoLog: true})
		b.Header()
		b.OpenReturnPath()
		b.Ping(1)
		blocks := []streamtest.Block{{Name: "pc.ram", Length: pages * 4096}}
		ram := b.RAMStart(blocks)
		for p := 0; p < pages; p++ {
			if p%512 == 0 {
				b.SectionPart(ram)
			}
			if rng.IntN(4) == 0 {
				b.Zero("pc.ram", uint64(p)*4096, 0)
			} else {
				b.Page("pc.ram", uint64(p)*4096, pool[rng.IntN(len(pool))])
			}
			if p%512 == 511 {
				b.EOS()
				b.Footer(ram)
			}
		}
		b.SectionEnd(ram)
		b.EOS()
		b.Footer(ram)
		for d := 0; d < 40; d++ {
			b.Device("dev", uint32(d), 1, make([]byte, 2000))
		}
		b.EOF()
		b.VMDescription(bytes.Repeat([]byte("{}"), 10000))
		benchStream = b.Bytes()
	})
	return benchStream
}

// BenchmarkReader reads a 256 MiB-equivalent stream with the Reader and,
// in the same iterations, copies it with io.CopyBuffer through a 64 KiB
// buffer (what a relay that does not parse would do). It reports both
// rates and reader/copy, the fraction of plain copying speed the reader
// keeps.
func BenchmarkReader(b *testing.B) {
	benchmarkAgainstCopy(b, bigStream())
}

func benchmarkAgainstCopy(b *testing.B, data []byte) {
	buf := make([]byte, 64<<10)
	var tRead, tCopy time.Duration
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		// The wrappers hide WriterTo/ReaderFrom so the copy really moves
		// every byte through buf.
		if _, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{bytes.NewReader(data)}, buf); err != nil {
			b.Fatal(err)
		}
		tCopy += time.Since(start)

		start = time.Now()
		r := NewReader(bytes.NewReader(data), Options{})
		var n int
		for {
			it, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n += len(it.Bytes)
		}
		tRead += time.Since(start)
		if n != len(data) {
			b.Fatalf("read %d of %d bytes", n, len(data))
		}
	}
	mb := float64(len(data)) * float64(b.N) / 1e6
	b.ReportMetric(mb/tRead.Seconds(), "reader-MB/s")
	b.ReportMetric(mb/tCopy.Seconds(), "copy-MB/s")
	b.ReportMetric(tCopy.Seconds()/tRead.Seconds(), "reader/copy")
}

// BenchmarkRealStream does the same on the first captured QEMU stream in
// DWCP_STREAMS (default /tmp/dwcp-streams), when there is one.
func BenchmarkRealStream(b *testing.B) {
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	if len(files) == 0 {
		b.Skipf("no captured streams in %s", dir)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		b.Fatal(err)
	}
	benchmarkAgainstCopy(b, data)
}
