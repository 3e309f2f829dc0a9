package pagestage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/zeebo/xxh3"
)

var (
	smallOnce sync.Once
	smallW    *workload
)

func small() *workload {
	smallOnce.Do(func() { smallW = genWorkload(smallWorkload) })
	return smallW
}

// encodeAll encodes w, flushing whenever batchBytes of stream are pending,
// and returns copies of the batches.
func encodeAll(t testing.TB, w *workload, opts Options, batchBytes int) ([]Batch, Stats) {
	t.Helper()
	e, err := NewEncoder(opts)
	if err != nil {
		t.Fatal(err)
	}
	var batches []Batch
	var b Batch
	flush := func() {
		if err := e.Flush(&b); err != nil {
			t.Fatal(err)
		}
		batches = append(batches, Batch{Compressible: bytes.Clone(b.Compressible), Stored: bytes.Clone(b.Stored)})
	}
	for _, it := range w.items {
		w.feed(e, it)
		if e.Pending() >= batchBytes {
			flush()
		}
	}
	flush()
	return batches, e.Stats()
}

// decodeAll decodes batches in order and returns the bytes.
func decodeAll(t testing.TB, batches []Batch, opts DecoderOptions) ([]byte, Stats) {
	t.Helper()
	d := NewDecoder(opts)
	var out []byte
	for i, b := range batches {
		var err error
		if out, err = d.Decode(out, b); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	return out, d.Stats()
}

// roundTrip checks that w survives encoding and decoding byte for byte and
// that both ends agree on what happened to every page and every cache entry.
func roundTrip(t testing.TB, w *workload, opts Options, dopts DecoderOptions, batchBytes int) Stats {
	t.Helper()
	batches, es := encodeAll(t, w, opts, batchBytes)
	out, ds := decodeAll(t, batches, dopts)
	if !bytes.Equal(out, w.raw) {
		t.Fatalf("decoded %d bytes differ from the %d stream bytes (first difference at %d)", len(out), len(w.raw), firstDiff(out, w.raw))
	}
	es2, ds2 := es, ds
	es2.Pages[PageOdd], es2.DeltaRejected = 0, 0
	if es2 != ds2 {
		t.Fatalf("encoder and decoder disagree:\nencoder %v\ndecoder %v", es, ds)
	}
	if es.BytesIn() != uint64(len(w.raw)) {
		t.Fatalf("encoder counted %d bytes in, stream is %d", es.BytesIn(), len(w.raw))
	}
	return es
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestRoundTripSynthetic(t *testing.T) {
	w := small()
	for _, batch := range []int{1, 64 << 10, 1 << 20, 64 << 20} {
		t.Run(fmt.Sprint(batch), func(t *testing.T) {
			s := roundTrip(t, w, Options{}, DecoderOptions{}, batch)
			for k := PageZero; k <= PageFull; k++ {
				if k != PageKnown && s.Pages[k] == 0 {
					t.Errorf("no %v pages: %v", k, s)
				}
			}
			if s.DeltaRejected == 0 || s.DeltaSavings() == 0 {
				t.Errorf("deltas never rejected or never saved anything: %v", s)
			}
			if s.BytesOut() >= s.BytesIn() {
				t.Errorf("page stage did not shrink the stream: %v", s)
			}
			t.Log(s)
		})
	}
}

func TestRoundTripQEMUZeroRecords(t *testing.T) {
	cfg := smallWorkload
	cfg.zeroItems, cfg.seed = false, 7
	s := roundTrip(t, genWorkload(cfg), Options{}, DecoderOptions{}, 256<<10)
	if s.Pages[PageZero] != 0 {
		t.Fatalf("zero pages seen though the stream sends them as opaque records: %v", s)
	}
}

// Tiny caches force evictions on every few pages; both ends must evict the
// same entries or a later reference would resolve to the wrong page.
func TestRoundTripTinyCaches(t *testing.T) {
	w := genHot(3, 12, 3000)
	for _, c := range []struct{ entries, cachePages int }{{1, 1}, {3, 3}, {5, 8}, {7, 9}} {
		t.Run(fmt.Sprintf("ring%d-cache%d", c.entries, c.cachePages), func(t *testing.T) {
			s := roundTrip(t, w, Options{DedupEntries: c.entries, DeltaCacheBytes: int64(c.cachePages) * PageSize},
				DecoderOptions{}, 128<<10)
			if s.DedupEvictions == 0 || s.DeltaEvictions == 0 {
				t.Fatalf("no evictions: %v", s)
			}
			if s.Pages[PageDup] == 0 || s.Pages[PageDelta] == 0 {
				t.Fatalf("no dups or deltas despite caches: %v", s)
			}
		})
	}
}

func TestTechniqueDisabled(t *testing.T) {
	w := small()
	full := roundTrip(t, w, Options{}, DecoderOptions{}, 1<<20)
	for _, c := range []struct {
		off  Technique
		gone []PageKind
	}{
		{Zero, []PageKind{PageZero}},
		{Dedup, []PageKind{PageDup}},
		{Delta, []PageKind{PageDelta}},
		{Incompressible, []PageKind{PageStored}},
		{Known, []PageKind{PageKnown}},
		{Zero | Dedup | Delta, []PageKind{PageZero, PageDup, PageDelta}},
		{AllTechniques, []PageKind{PageZero, PageDup, PageDelta, PageStored, PageKnown}},
	} {
		t.Run(c.off.String(), func(t *testing.T) {
			s := roundTrip(t, w, Options{Disabled: c.off}, DecoderOptions{}, 1<<20)
			for _, k := range c.gone {
				if s.Pages[k] != 0 {
					t.Errorf("%v disabled but %d %v pages", c.off, s.Pages[k], k)
				}
			}
			// Without zero runs, zero pages become references to the first one.
			if c.off == Zero && s.Pages[PageDup] < full.Pages[PageDup]+full.Pages[PageZero]-1 {
				t.Errorf("zero pages did not become duplicates: %v", s)
			}
			if c.off != Known && c.off != Zero && s.Pages[PageFull] <= full.Pages[PageFull] && s.BytesOut() <= full.BytesOut() {
				t.Errorf("disabling %v changed nothing: %v", c.off, s)
			}
			if c.off == AllTechniques && s.Pages[PageFull] != uint64(w.pages) {
				t.Errorf("all off: %d full pages of %d", s.Pages[PageFull], w.pages)
			}
		})
	}
	// A session without a ring or a cache holds no state at all.
	s := roundTrip(t, w, Options{DedupEntries: -1, DeltaCacheBytes: -1}, DecoderOptions{}, 1<<20)
	if s.Pages[PageDup]+s.Pages[PageDelta] != 0 {
		t.Fatalf("dups or deltas without a ring or cache: %v", s)
	}
}

// Mode changes between pages need no notice to the decoder.
func TestSetDisabledMidSession(t *testing.T) {
	w := small()
	e, err := NewEncoder(Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderOptions{})
	var out []byte
	var b Batch
	modes := []Technique{0, AllTechniques, Dedup, Delta | Zero, Incompressible, 0}
	for i, it := range w.items {
		if i%97 == 0 {
			e.SetDisabled(modes[(i/97)%len(modes)])
		}
		w.feed(e, it)
		if e.Pending() > 200<<10 {
			if err := e.Flush(&b); err != nil {
				t.Fatal(err)
			}
			if out, err = d.Decode(out, b); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Flush(&b); err != nil {
		t.Fatal(err)
	}
	if out, err = d.Decode(out, b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, w.raw) {
		t.Fatal("decoded bytes differ")
	}
}

func TestOddPagesAndEmptyBatches(t *testing.T) {
	e, err := NewEncoder(Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderOptions{})
	var b Batch
	var out []byte
	for range 3 { // empty batches, the first with the session parameters
		if err := e.Flush(&b); err != nil {
			t.Fatal(err)
		}
		if out, err = d.Decode(out, b); err != nil || len(out) != 0 {
			t.Fatalf("empty batch: %d bytes, %v", len(out), err)
		}
	}
	odd := bytes.Repeat([]byte{7}, 100)
	e.AddPage("pc.ram", 0, odd)
	e.AddPage("pc.ram", 0, make([]byte, 2*PageSize))
	e.AddOpaque(nil)
	if err := e.Flush(&b); err != nil {
		t.Fatal(err)
	}
	if out, err = d.Decode(out, b); err != nil {
		t.Fatal(err)
	}
	if want := append(bytes.Clone(odd), make([]byte, 2*PageSize)...); !bytes.Equal(out, want) {
		t.Fatal("odd-sized pages not passed through")
	}
	if s := e.Stats(); s.Pages[PageOdd] != 2 || s.Batches != 4 {
		t.Fatalf("stats %v", s)
	}
}

func TestDecodeTo(t *testing.T) {
	w := small()
	batches, _ := encodeAll(t, w, Options{}, 512<<10)
	d := NewDecoder(DecoderOptions{})
	var buf bytes.Buffer
	for _, b := range batches {
		if _, err := d.DecodeTo(&buf, b); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf.Bytes(), w.raw) {
		t.Fatal("DecodeTo wrote different bytes")
	}
	if _, err := NewDecoder(DecoderOptions{}).DecodeTo(failWriter{}, batches[0]); err == nil {
		t.Fatal("write error not reported")
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// knownMap plays an earlier checkpoint both ends hold.
type knownMap map[PageHash][]byte

func (k knownMap) Known(h PageHash) bool { _, ok := k[h]; return ok }

func (k knownMap) KnownPage(h PageHash, dst []byte) error {
	p, ok := k[h]
	if !ok {
		return fmt.Errorf("page %v not in the checkpoint", h)
	}
	copy(dst, p)
	return nil
}

func TestKnownPagesHook(t *testing.T) {
	w := small()
	known := knownMap{}
	for i, it := range w.items {
		if !it.opaque && i%3 == 0 {
			known[PageHash(xxh3.Hash128(it.bytes))] = it.bytes
		}
	}
	s := roundTrip(t, w, Options{Known: known}, DecoderOptions{Known: known}, 1<<20)
	if s.Pages[PageKnown] == 0 {
		t.Fatalf("no known pages: %v", s)
	}
	batches, _ := encodeAll(t, w, Options{Known: known}, 64<<20)
	if _, err := NewDecoder(DecoderOptions{}).Decode(nil, batches[0]); !errors.Is(err, ErrUnknownBase) {
		t.Fatalf("known page without a store: %v", err)
	}
	liar := knownMap{}
	for h := range known {
		liar[h] = make([]byte, PageSize)
		liar[h][0] = 1
	}
	if _, err := NewDecoder(DecoderOptions{Known: liar}).Decode(nil, batches[0]); !errors.Is(err, ErrUnknownBase) {
		t.Fatalf("known-page store returning wrong content: %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{DeltaMaxBytes: PageSize},
		{DeltaMaxBytes: -1},
		{IncompressibleBits: -1},
		{DedupEntries: maxEntries + 1},
		{DeltaCacheBytes: (maxEntries + 1) * PageSize},
		{Disabled: 0x80},
	} {
		if _, err := NewEncoder(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}

// The hot path allocates nothing per page once buffers have grown.
func TestNoAllocationsPerPage(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters allocate")
	}
	w := small()
	e, err := NewEncoder(Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderOptions{})
	var b Batch
	var out []byte
	run := func() {
		for _, it := range w.items {
			w.feed(e, it)
			if e.Pending() >= 1<<20 {
				_ = e.Flush(&b)
				out, err = d.Decode(out[:0], b)
			}
		}
	}
	run() // grow buffers, fill caches
	run()
	if n := testing.AllocsPerRun(2, run); n != 0 {
		t.Fatalf("%v allocations per pass over %d pages", n, w.pages)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// Pages of blocks the table cannot name (a name QEMU cannot write, or past
// the table's bound) travel without an address, so never as deltas.
func TestBlockTableLimits(t *testing.T) {
	w := &workload{}
	long := string(bytes.Repeat([]byte{'x'}, maxBlockName+1))
	page := testPage(9)
	add := func(block string) {
		start := len(w.raw)
		w.raw = append(w.raw, page...)
		w.items = append(w.items, item{block: block, bytes: w.raw[start:len(w.raw):len(w.raw)]})
		w.pages++
		binary.LittleEndian.PutUint32(page, uint32(w.pages))
	}
	for range 3 { // the same pages again: deltas where an address is carried
		for i := range maxBlocks + 5 {
			add(fmt.Sprint("b", i))
		}
		add(long)
		add("")
	}
	s := roundTrip(t, w, Options{}, DecoderOptions{}, 1<<20)
	if s.Pages[PageDelta] != 2*maxBlocks {
		t.Fatalf("%d deltas, want %d (named blocks only): %v", s.Pages[PageDelta], 2*maxBlocks, s)
	}
}
