package pagestage

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/xxh3"
)

// TestMeasure prints the tables docs/pagestage.md quotes: technique by
// technique gains, and the sweeps that chose the default thresholds. It
// takes minutes of CPU, so it runs only when asked:
//
//	DWCP_PAGESTAGE_MEASURE=all go test -run TestMeasure -v -timeout 1h ./host/pagestage/
//
// or a comma-separated subset of: techniques, deltamax, bits, dedup, cache,
// classify, known.
func TestMeasure(t *testing.T) {
	sel := os.Getenv("DWCP_PAGESTAGE_MEASURE")
	if sel == "" {
		t.Skip("set DWCP_PAGESTAGE_MEASURE=all (or a list of sections) to run")
	}
	want := func(section string) bool {
		return sel == "all" || strings.Contains(","+sel+",", ","+section+",")
	}
	corpora := []corpus{{"synthetic", benchSynthetic()}}
	for _, p := range realStreamsOrNone() {
		corpora = append(corpora, corpus{filepath.Base(p), readStream(t, p)})
	}
	enc := newZstd(t)
	var sb strings.Builder
	for _, c := range corpora {
		w := c.w
		zb, zt := measureZstdOnly(enc, w, gainBatch)
		fmt.Fprintf(&sb, "\n## %s: %d bytes, %d page items; zstd alone %d bytes (%.3fx) in %v\n\n",
			c.name, len(w.raw), w.pages, zb, float64(len(w.raw))/float64(zb), zt.Round(time.Millisecond))
		row := func(label string, o Options) {
			comp, stored, best, s := measureStaged(t, enc, w, o, gainBatch)
			fmt.Fprintf(&sb, "| %s | %d | %.3f | %.3f | %.2f | zero %d dup %d delta %d (rej %d) stored %d full %d | %d |\n",
				label, comp+stored, float64(len(w.raw))/float64(comp+stored), float64(zb)/float64(comp+stored),
				float64(zt)/float64(best), s.Pages[PageZero], s.Pages[PageDup], s.Pages[PageDelta], s.DeltaRejected,
				s.Pages[PageStored], s.Pages[PageFull], s.DeltaBytes)
		}
		header := func(title string) {
			fmt.Fprintf(&sb, "\n%s\n\n| config | bytes out | ratio | gain vs zstd | speed vs zstd | pages | delta bytes |\n|---|---:|---:|---:|---:|---|---:|\n", title)
		}
		if want("techniques") {
			header("Techniques")
			row("all on (defaults)", Options{})
			for _, tq := range []Technique{Zero, Dedup, Delta, Incompressible} {
				row("without "+tq.String(), Options{Disabled: tq})
			}
			row("all off", Options{Disabled: AllTechniques})
		}
		if want("deltamax") {
			header("DeltaMaxBytes")
			for _, m := range []int{64, 256, 512, 1024, 2048, 3072, 4000} {
				row(fmt.Sprint(m), Options{DeltaMaxBytes: m})
			}
		}
		if want("bits") {
			header("IncompressibleBits")
			for _, b := range []float64{6.5, 7.0, 7.25, 7.5, 7.65, 7.75, 9} {
				row(fmt.Sprint(b), Options{IncompressibleBits: b})
			}
		}
		if want("dedup") {
			header("DedupEntries")
			for _, n := range []int{1024, 4096, 16384, 65536} {
				row(fmt.Sprint(n), Options{DedupEntries: n})
			}
		}
		if want("cache") {
			header("DeltaCacheBytes")
			for _, n := range []int64{16 << 20, 64 << 20, 128 << 20, 256 << 20} {
				row(fmt.Sprintf("%d MiB", n>>20), Options{DeltaCacheBytes: n})
			}
		}
		if want("classify") {
			fmt.Fprintf(&sb, "\nStored-section classifier against single-page zstd:\n\n%s", classify(t, w))
		}
	}
	// single.bin is the first capture of the guest; the others came later.
	for i, c := range corpora {
		if c.name == "single.bin" && want("known") {
			rest := append(append([]corpus{}, corpora[1:i]...), corpora[i+1:]...)
			fmt.Fprintf(&sb, "\nKnown-pages potential:\n\n%s", knownPotential(c.w, rest...))
		}
	}
	t.Log(sb.String())
}

type corpus struct {
	name string
	w    *workload
}

func realStreamsOrNone() []string {
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	return files
}

// classify compares the entropy test with what zstd does to each page alone:
// a page zstd cannot shrink by 3 % is "incompressible".
func classify(t *testing.T, w *workload) string {
	enc := newZstd(t)
	type bucket struct{ pages, zin, zout int }
	var stored, kept, missed bucket
	var dst []byte
	for _, it := range w.items {
		if it.opaque || isZeroPage(it.bytes) {
			continue
		}
		dst = enc.EncodeAll(it.bytes, dst[:0])
		b := &kept
		if sampleEntropy(it.bytes) > DefaultIncompressibleBits {
			b = &stored
		} else if len(dst) > PageSize*97/100 {
			b = &missed
		}
		b.pages++
		b.zin += PageSize
		b.zout += len(dst)
	}
	r := func(b bucket) float64 { return float64(b.zin) / float64(max(b.zout, 1)) }
	return fmt.Sprintf("stored %d pages (their zstd ratio alone %.3f); compressed %d pages (%.3f); "+
		"of those, %d did not shrink 3 %% (%.3f)\n", stored.pages, r(stored), kept.pages+missed.pages,
		float64(kept.zin+missed.zin)/float64(max(kept.zout+missed.zout, 1)), missed.pages, r(missed))
}

// knownPotential counts the non-zero pages of later streams whose content
// the first stream already held: what a known-pages store could elide.
func knownPotential(first *workload, later ...corpus) string {
	held := map[xxh3.Uint128]bool{}
	for _, it := range first.items {
		if !it.opaque {
			held[xxh3.Hash128(it.bytes)] = true
		}
	}
	var sb strings.Builder
	for _, c := range later {
		var n, hit int
		for _, it := range c.w.items {
			if !it.opaque && !isZeroPage(it.bytes) {
				n++
				if held[xxh3.Hash128(it.bytes)] {
					hit++
				}
			}
		}
		fmt.Fprintf(&sb, "%s: %d of %d non-zero pages (%.1f %%) held by the first stream\n", c.name, hit, n, 100*float64(hit)/float64(n))
	}
	return sb.String()
}
