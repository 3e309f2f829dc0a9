package pagestage

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/xxh3"
)

func TestDeltaRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	old := make([]byte, PageSize)
	cur := make([]byte, PageSize)
	page := make([]byte, PageSize)
	for i := range 3000 {
		g := gen{r: r}
		g.fresh(old)
		copy(cur, old)
		writes := r.IntN(12)
		if i%500 == 0 {
			writes = 4096
		}
		for range writes {
			l := 1 + r.IntN(16)
			off := r.IntN(PageSize - l + 1)
			if r.IntN(4) == 0 { // the page's edges
				off = []int{0, PageSize - l}[r.IntN(2)]
			}
			for k := off; k < off+l; k++ {
				cur[k] = byte(r.Uint32())
			}
		}
		spans, ok := appendDelta(nil, old, cur, PageSize-1)
		if !ok {
			if len(spans) < PageSize-1 {
				t.Fatalf("delta of %d bytes refused under limit %d", len(spans), PageSize-1)
			}
			continue
		}
		copy(page, old)
		if err := applyDelta(page, spans); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(page, cur) {
			t.Fatalf("case %d: delta of %d bytes rebuilt a different page", i, len(spans))
		}
	}
}

func TestDeltaSizes(t *testing.T) {
	old := make([]byte, PageSize)
	cur := make([]byte, PageSize)
	if spans, ok := appendDelta(nil, old, cur, 10); !ok || len(spans) != 0 {
		t.Fatalf("identical pages: %d bytes, %v", len(spans), ok)
	}
	cur[0], cur[4095] = 1, 1
	if spans, _ := appendDelta(nil, old, cur, 100); !bytes.Equal(spans, []byte{0, 1, 1, 0x80 + 4094 - 128*31, 31, 1, 1}) {
		t.Fatalf("two bytes changed at the edges: % x", spans)
	}
	cur[1], cur[4095] = 0, 0
	cur[2] = 3 // gap of one equal byte is folded into the span
	if spans, _ := appendDelta(nil, old, cur, 100); !bytes.Equal(spans, []byte{0, 3, 1, 0, 3}) {
		t.Fatalf("gap folding: % x", spans)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := range cur {
		cur[i] = byte(r.Uint32()) | 1
	}
	spans, ok := appendDelta(nil, old, cur, 1024)
	if ok || len(spans) > 0 && len(spans) <= 1024 {
		t.Fatalf("rewritten page: %d bytes, ok %v", len(spans), ok)
	}
}

func TestApplyDeltaRejects(t *testing.T) {
	page := make([]byte, PageSize)
	for _, spans := range [][]byte{
		{0x80},                // truncated uvarint
		{0, 0},                // zero-length span
		{0, 5, 1, 2},          // span longer than its data
		{0x80, 0x20, 1, 1},    // skip 4096 then a byte
		{0xff, 0x1f, 2, 1, 1}, // a span running past the page
		{0, 0x81, 0x20},       // length 4097
		{0, 1, 9, 0x80},       // trailing garbage
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 1, 1}, // skip 2^64-1
	} {
		if err := applyDelta(page, spans); err == nil {
			t.Errorf("% x accepted", spans)
		}
	}
}

// The index must give, for every live ring entry, the distance at which the
// decoder's ring holds that content, and forget evicted entries.
func TestDedupIndexMirrorsRing(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7, 64, 1000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var x dedupIndex
			var ring dedupRing
			x.init(n)
			ring.init(n)
			r := rand.New(rand.NewPCG(uint64(n), 9))
			page := make([]byte, PageSize)
			live := map[xxh3.Uint128]bool{}
			var order []xxh3.Uint128
			for i := range 5 * n {
				// Few distinct contents, so finds hit often.
				clear(page)
				page[0], page[1] = byte(r.IntN(3*n)), byte(i%2)
				h := xxh3.Hash128(page)
				if dist, ok := x.find(h); ok {
					if !live[h] {
						t.Fatalf("evicted content found")
					}
					got, ok := ring.get(dist)
					if !ok || !bytes.Equal(got, page) {
						t.Fatalf("distance %d does not name the content in the ring", dist)
					}
					continue
				} else if live[h] {
					t.Fatalf("live content not found")
				}
				if evicted := x.insert(h); evicted != (len(order) >= n) {
					t.Fatalf("eviction reported %v with %d entries", evicted, len(order))
				}
				ring.insert(page)
				live[h] = true
				order = append(order, h)
				if len(order) > n {
					delete(live, order[len(order)-n-1])
				}
			}
			for h := range live {
				if _, ok := x.find(h); !ok {
					t.Fatalf("live entry lost after evictions")
				}
			}
			if _, ok := ring.get(uint64(n) + 1); ok {
				t.Fatal("ring returned an entry beyond its size")
			}
			if _, ok := ring.get(0); ok {
				t.Fatal("ring returned distance 0")
			}
		})
	}
}

func TestDeltaCacheLRU(t *testing.T) {
	var c deltaCache
	c.init(1, 3)
	for pfn := uint64(0); pfn < 3; pfn++ {
		mem, ev := c.put(0, pfn)
		mem[0] = byte(pfn + 1)
		if ev {
			t.Fatal("eviction before the set is full")
		}
	}
	if _, ev := c.put(0, 0); ev { // re-store page 0: page 1 is now the oldest
		t.Fatal("re-storing evicted")
	}
	if _, ev := c.put(1, 1); !ev { // same page number, other block
		t.Fatal("no eviction when full")
	}
	if _, ok := c.lookup(0, 1); ok {
		t.Fatal("least recently stored entry survived")
	}
	for _, k := range []struct {
		block uint32
		pfn   uint64
	}{{0, 0}, {0, 2}, {1, 1}} {
		if _, ok := c.lookup(k.block, k.pfn); !ok {
			t.Fatalf("entry %v lost", k)
		}
	}
	if p, _ := c.lookup(0, 2); p[0] != 3 {
		t.Fatalf("entry content %d", p[0])
	}
}

func TestDeltaGeometry(t *testing.T) {
	for _, c := range []struct {
		bytes      int64
		sets, ways int
	}{{0, 0, 0}, {PageSize - 1, 0, 0}, {PageSize, 1, 1}, {3 * PageSize, 1, 3}, {9 * PageSize, 2, 4}, {64 << 20, 4096, 4}} {
		if s, w := deltaGeometry(c.bytes); s != c.sets || w != c.ways {
			t.Errorf("%d bytes: %d x %d, want %d x %d", c.bytes, s, w, c.sets, c.ways)
		}
	}
}

func TestSampleEntropy(t *testing.T) {
	var g gen
	g.r = rand.New(rand.NewPCG(5, 6))
	p := make([]byte, PageSize)
	if e := sampleEntropy(p); e != 0 {
		t.Fatalf("zero page: %v bits", e)
	}
	g.fillRandom(p)
	if e := sampleEntropy(p); e < 7.1 || e > 7.5 {
		t.Fatalf("random page: %v bits", e)
	}
	g.fillText(p)
	if e := sampleEntropy(p); e > 5.5 {
		t.Fatalf("text page: %v bits", e)
	}
	g.fillStruct(p)
	if e := sampleEntropy(p); e > 5 {
		t.Fatalf("struct page: %v bits", e)
	}
	for i := range p {
		p[i] = byte(i)
	}
	if e := sampleEntropy(p); e != 5 { // 32 distinct values, 8 of each
		t.Fatalf("sawtooth page: %v bits", e)
	}
	for i := range p {
		p[i] = byte(i % 256 / 8 * 8)
	}
	if e := sampleEntropy(p); math.Abs(e-2) > 1e-4 { // 4 values in each 32-byte run
		t.Fatalf("stepped page: %v bits", e)
	}
	if entropyLimit(8) != 0 || entropyLimit(9) != 0 {
		t.Fatal("a threshold the sample cannot reach still stores pages")
	}
	g.fillRandom(p)
	if sampleSum(p) >= entropyLimit(DefaultIncompressibleBits) {
		t.Fatal("random page not under the default limit")
	}
}

func TestZigzag(t *testing.T) {
	for _, v := range []uint64{0, 1, ^uint64(0), 1 << 63, 12345, ^uint64(12344)} {
		if unzigzag(zigzag(v)) != v {
			t.Errorf("%#x", v)
		}
	}
	if zigzag(^uint64(0)) != 1 || zigzag(1) != 2 {
		t.Error("zigzag does not keep small differences small")
	}
}

func TestStrings(t *testing.T) {
	if s := (Zero | Delta | 0x80).String(); s != "zero|delta|0x80" {
		t.Error(s)
	}
	if s := Technique(0).String(); s != "none" {
		t.Error(s)
	}
	if s := PageStored.String(); s != "stored" {
		t.Error(s)
	}
	if s := PageKind(99).String(); s != "PageKind(99)" {
		t.Error(s)
	}
}
