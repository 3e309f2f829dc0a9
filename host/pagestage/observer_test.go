package pagestage

import (
	"bytes"
	"testing"

	"github.com/zeebo/xxh3"
)

// recorded is what an observer saw: hashes and contents in order.
type recorded struct {
	hashes []PageHash
	pages  []byte
}

func (r *recorded) ObservePage(h PageHash, page []byte) {
	r.hashes = append(r.hashes, h)
	r.pages = append(r.pages, page...)
}

// The encoder and the decoder observe the same pages in the same order,
// with the right hashes, and leave out exactly zero runs and dedup
// references — with every technique on, with known pages, and with the
// stage reduced to a framer.
func TestObserverSeesTheSamePagesOnBothEnds(t *testing.T) {
	w := small()
	known := knownMap{}
	for i, it := range w.items {
		if !it.opaque && len(it.bytes) == PageSize && i%5 == 0 && !isZeroPage(it.bytes) {
			known[PageHash(xxh3.Hash128(it.bytes))] = it.bytes
		}
	}
	for _, c := range []struct {
		name     string
		disabled Technique
		known    bool
	}{
		{"all", 0, false},
		{"known", 0, true},
		{"no dedup", Dedup, true},
		{"framer", AllTechniques, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var enc, dec recorded
			opts, dopts := Options{Disabled: c.disabled, Observer: &enc}, DecoderOptions{Observer: &dec}
			if c.known {
				opts.Known, dopts.Known = known, known
			}
			s := roundTrip(t, w, opts, dopts, 1<<20)
			if len(enc.hashes) == 0 || len(enc.hashes) != len(dec.hashes) || !bytes.Equal(enc.pages, dec.pages) {
				t.Fatalf("encoder observed %d pages, decoder %d (contents equal: %v)", len(enc.hashes), len(dec.hashes), bytes.Equal(enc.pages, dec.pages))
			}
			for i, h := range enc.hashes {
				if dec.hashes[i] != h || PageHash(xxh3.Hash128(enc.pages[i*PageSize:(i+1)*PageSize])) != h {
					t.Fatalf("page %d: encoder hash %v, decoder hash %v, content hashes to %v", i, h, dec.hashes[i], PageHash(xxh3.Hash128(enc.pages[i*PageSize:(i+1)*PageSize])))
				}
			}
			want := s.Pages[PageKnown] + s.Pages[PageDelta] + s.Pages[PageStored] + s.Pages[PageFull]
			if uint64(len(enc.hashes)) != want {
				t.Fatalf("observed %d pages, want %d (every page but zero runs and duplicates): %v", len(enc.hashes), want, s)
			}
			if c.known && s.Pages[PageKnown] == 0 {
				t.Fatalf("no known pages: %v", s)
			}
		})
	}
}

type countObserver struct{ n int }

func (c *countObserver) ObservePage(PageHash, []byte) { c.n++ }

// Observing costs no allocation per page on either end.
func TestObserverAllocatesNothing(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters allocate")
	}
	w := small()
	var eo, do countObserver
	e, err := NewEncoder(Options{Observer: &eo})
	if err != nil {
		t.Fatal(err)
	}
	d := NewDecoder(DecoderOptions{Observer: &do})
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
	run()
	run()
	if n := testing.AllocsPerRun(2, run); n != 0 {
		t.Fatalf("%v allocations per pass over %d pages", n, w.pages)
	}
	if err != nil || eo.n == 0 || do.n == 0 {
		t.Fatalf("err %v, observed %d / %d", err, eo.n, do.n)
	}
}
