package pagestore

import (
	"fmt"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
)

// benchPages are distinct pages to record.
func benchPages(n int) ([][]byte, []pagestage.PageHash) {
	pages := make([][]byte, n)
	hashes := make([]pagestage.PageHash, n)
	for i := range pages {
		pages[i] = testPage(uint64(i))
		hashes[i] = hashOf(pages[i])
	}
	return pages, hashes
}

// BenchmarkRecord records sessions of distinct pages (observe every page,
// commit, wait for the disk) and reports the hot path's cost — the time
// spent in ObservePage — relative to copying the same pages once in
// memory, measured in the same run ("hot/copy"), and the whole session's
// rate including the writer and the commit's fsync. "4MiB" fits the
// recorder's buffers (the hot path never waits for the disk); "64MiB" does
// not (the hot path runs at the writer's pace).
func BenchmarkRecord(b *testing.B) {
	for _, n := range []int{1024, 16384} {
		b.Run(fmt.Sprintf("%dMiB", n*PageSize>>20), func(b *testing.B) { benchRecord(b, n) })
	}
}

func benchRecord(b *testing.B, n int) {
	pages, hashes := benchPages(n)
	sink := make([]byte, 0, n*PageSize)
	var copyTime, hotTime, total time.Duration
	s := open(b, b.TempDir(), 0)
	defer s.Close()
	b.SetBytes(int64(n * PageSize))
	i := 0
	for b.Loop() {
		t0 := time.Now()
		sink = sink[:0]
		for _, p := range pages {
			sink = append(sink, p...)
		}
		copyTime += time.Since(t0)

		i++
		r, err := s.Record("B", SessionID(fmt.Sprint("bench-", i)), RecordOptions{ExpectPages: n})
		if err != nil {
			b.Fatal(err)
		}
		t0 = time.Now()
		for k, p := range pages {
			r.ObservePage(hashes[k], p)
		}
		hotTime += time.Since(t0)
		r.Finish(true)
		if err := r.Wait(); err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
	}
	b.ReportMetric(float64(hotTime)/float64(copyTime), "hot/copy")
	b.ReportMetric(float64(hotTime.Nanoseconds())/float64(i*n), "hot-ns/page")
	b.ReportMetric(float64(i*n*PageSize)/total.Seconds()/1e6, "session-MB/s")
}

// BenchmarkKnownLookup is the source's per-page question, against a set of
// a million pages.
func BenchmarkKnownLookup(b *testing.B) {
	set := &Set{pages: make(map[pagestage.PageHash]struct{}, 1<<20)}
	for i := range uint64(1 << 20) {
		set.pages[pagestage.PageHash{Hi: i * 0x9e3779b97f4a7c15, Lo: i}] = struct{}{}
	}
	i := uint64(0)
	for b.Loop() {
		i++
		if set.Known(pagestage.PageHash{Hi: i * 0x9e3779b97f4a7c15, Lo: i ^ 1}) && i > 1<<40 {
			b.Fatal("impossible")
		}
	}
}

// BenchmarkKnownPage is the destination's read of a known page (pread and
// hash check), against copying a page in memory in the same run.
func BenchmarkKnownPage(b *testing.B) {
	const n = 4096
	s := open(b, b.TempDir(), 0)
	defer s.Close()
	pages, hashes := benchPages(n)
	r, err := s.Record("B", "read", RecordOptions{ExpectPages: n})
	if err != nil {
		b.Fatal(err)
	}
	for k, p := range pages {
		r.ObservePage(hashes[k], p)
	}
	r.Finish(true)
	if err := r.Wait(); err != nil {
		b.Fatal(err)
	}
	rd := s.OpenReader("B")
	defer rd.Close()
	dst := make([]byte, PageSize)
	var copyTime time.Duration
	k := 0
	b.SetBytes(PageSize)
	for b.Loop() {
		k = (k + 1) % n
		if err := rd.KnownPage(hashes[k], dst); err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Now()
	for i := range b.N {
		copy(dst, pages[i%n])
	}
	copyTime = time.Since(t0)
	b.ReportMetric(float64(b.Elapsed())/float64(copyTime), "x-copy")
}
