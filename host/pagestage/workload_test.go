package pagestage

import (
	"encoding/binary"
	"math/rand/v2"
	"strings"
)

// A synthetic migration stream: RAM pages in QEMU-like framing, several
// passes, the later ones re-sending a dirty subset, with device state at the
// end. Page contents mix what real guests hold (zero, text, kernel-like
// structures, random data, copies of other pages) and later passes mutate
// pages the way baselines.md measured (a few small writes, or a rewrite).

type item struct {
	opaque bool
	block  string
	addr   uint64
	bytes  []byte // aliases workload.raw
}

type workload struct {
	items []item
	raw   []byte
	pages int // page items
}

type blockSpec struct {
	name  string
	pages int
}

type workloadConfig struct {
	seed   uint64
	blocks []blockSpec
	passes int
	dirty  float64 // fraction of pages re-sent in each later pass
	// zeroItems sends zero pages as page items (QEMU with
	// zero-page-detection=none); otherwise as QEMU 7.2 does, as opaque
	// ZERO records.
	zeroItems bool
}

var smallWorkload = workloadConfig{
	seed:      1,
	blocks:    []blockSpec{{"pc.ram", 1536}, {"vga.vram", 256}, {"/rom@etc/acpi/tables", 32}},
	passes:    3,
	dirty:     0.25,
	zeroItems: true,
}

var benchWorkload = workloadConfig{
	seed:      2,
	blocks:    []blockSpec{{"pc.ram", 8192}, {"vga.vram", 1024}, {"/rom@etc/acpi/tables", 32}},
	passes:    4,
	dirty:     0.2,
	zeroItems: true,
}

var words = strings.Fields(`the of and to in is that for it as was with be by on not he this are or his
from at which but have an they you were her she there had been one all has their when would who will
more if no out so said what up its about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many before must
through back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under never
kernel memory page migration socket buffer device driver network process thread file system error`)

type gen struct {
	r   *rand.Rand
	cfg workloadConfig
}

func (g *gen) fillText(p []byte) {
	i := 0
	for i < len(p) {
		w := words[g.r.IntN(len(words))]
		i += copy(p[i:], w)
		if i < len(p) {
			if g.r.IntN(12) == 0 {
				p[i] = '\n'
			} else {
				p[i] = ' '
			}
			i++
		}
	}
}

// fillStruct writes 64-byte records like kernel objects: a pointer into the
// direct map, small counters and flags, padding.
func (g *gen) fillStruct(p []byte) {
	base := uint64(0xffff888000000000) + uint64(g.r.IntN(1<<20))<<12
	for i := 0; i+64 <= len(p); i += 64 {
		binary.LittleEndian.PutUint64(p[i:], base+uint64(g.r.IntN(4096))*64)
		binary.LittleEndian.PutUint64(p[i+8:], base+uint64(g.r.IntN(4096))*64)
		binary.LittleEndian.PutUint32(p[i+16:], uint32(g.r.IntN(100)))
		binary.LittleEndian.PutUint32(p[i+20:], uint32(i/64))
		p[i+24] = byte(g.r.IntN(4))
		clear(p[i+25 : i+64])
	}
}

func (g *gen) fillRandom(p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], g.r.Uint64())
	}
}

func (g *gen) fillSparse(p []byte) {
	clear(p)
	for n := 1 + g.r.IntN(8); n > 0; n-- {
		p[g.r.IntN(len(p))] = byte(1 + g.r.IntN(255))
	}
}

func (g *gen) fresh(p []byte) {
	switch x := g.r.IntN(100); {
	case x < 35:
		clear(p)
	case x < 55:
		g.fillText(p)
	case x < 75:
		g.fillStruct(p)
	case x < 90:
		g.fillRandom(p)
	default:
		g.fillSparse(p)
	}
}

func genWorkload(cfg workloadConfig) *workload {
	g := &gen{r: rand.New(rand.NewPCG(cfg.seed, 0x5eed)), cfg: cfg}
	mem := make([][][]byte, len(cfg.blocks))
	var all [][]byte
	for b, bs := range cfg.blocks {
		mem[b] = make([][]byte, bs.pages)
		for i := range mem[b] {
			mem[b][i] = make([]byte, PageSize)
			g.fresh(mem[b][i])
			all = append(all, mem[b][i])
		}
	}
	// About 5 % of pages start as copies of another page, across blocks too.
	for _, p := range all {
		if g.r.IntN(20) == 0 {
			copy(p, all[g.r.IntN(len(all))])
		}
	}

	w := &workload{}
	type span struct {
		opaque     bool
		start, end int
		block      string
		addr       uint64
	}
	var spans []span
	opaque := func(b []byte) {
		start := len(w.raw)
		w.raw = append(w.raw, b...)
		if n := len(spans); n > 0 && spans[n-1].opaque {
			spans[n-1].end = len(w.raw)
			return
		}
		spans = append(spans, span{opaque: true, start: start, end: len(w.raw)})
	}
	var hdr []byte
	for pass := 0; pass < cfg.passes; pass++ {
		opaque([]byte{0x02, 0, 0, 0, 2}) // SECTION_PART ram
		for b, bs := range cfg.blocks {
			first := true
			for i, p := range mem[b] {
				if pass > 0 {
					if g.r.Float64() >= cfg.dirty {
						continue
					}
					g.mutate(p, all)
				}
				addr := uint64(i) * PageSize
				zero := isZeroPage(p)
				flags := uint64(0x08)
				if zero && !cfg.zeroItems {
					flags = 0x02
				}
				if !first {
					flags |= 0x20
				}
				hdr = binary.BigEndian.AppendUint64(hdr[:0], addr|flags)
				if first {
					hdr = append(hdr, byte(len(bs.name)))
					hdr = append(hdr, bs.name...)
					first = false
				}
				opaque(hdr)
				if zero && !cfg.zeroItems {
					opaque([]byte{0})
					continue
				}
				start := len(w.raw)
				w.raw = append(w.raw, p...)
				spans = append(spans, span{start: start, end: len(w.raw), block: bs.name, addr: addr})
				w.pages++
			}
		}
		opaque([]byte{0, 0, 0, 0, 0, 0, 0, 0x10, 0x7e, 0, 0, 0, 2}) // EOS, footer
	}
	// Device state: a few blobs of mixed, mostly small, content.
	for n := 0; n < 20; n++ {
		b := make([]byte, 100+g.r.IntN(6000))
		if n%2 == 0 {
			g.fillText(b)
		} else {
			g.fillSparse(b)
		}
		opaque(b)
	}
	opaque([]byte{0x00}) // EOF
	for _, s := range spans {
		w.items = append(w.items, item{opaque: s.opaque, block: s.block, addr: s.addr, bytes: w.raw[s.start:s.end:s.end]})
	}
	return w
}

// mutate changes a dirty page like a running guest does: mostly rewrites,
// often a few small writes, sometimes zeroing, copying or the same bytes.
func (g *gen) mutate(p []byte, all [][]byte) {
	switch x := g.r.IntN(100); {
	case x < 22: // 1-4 writes, 1-64 bytes in all
		budget := 1 + g.r.IntN(64)
		for n := 1 + g.r.IntN(4); n > 0 && budget > 0; n-- {
			l := 1 + g.r.IntN(budget)
			budget -= l
			off := g.r.IntN(PageSize - l + 1)
			for k := off; k < off+l; k++ {
				p[k] = byte(g.r.Uint32())
			}
		}
	case x < 80:
		switch g.r.IntN(3) {
		case 0:
			g.fillText(p)
		case 1:
			g.fillStruct(p)
		default:
			g.fillRandom(p)
		}
	case x < 88:
		clear(p)
	case x < 95:
		copy(p, all[g.r.IntN(len(all))])
	}
}

func isZeroPage(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

func (w *workload) feed(e *Encoder, it item) {
	if it.opaque {
		e.AddOpaque(it.bytes)
	} else {
		e.AddPage(it.block, it.addr, it.bytes)
	}
}

// genHot rewrites a small hot set of pages over and over, sparsely or
// wholly, and now and then to the content of another hot page: the access
// pattern that makes tiny caches evict and hit in turn.
func genHot(seed uint64, hot, steps int) *workload {
	g := &gen{r: rand.New(rand.NewPCG(seed, 0x407))}
	pages := make([][]byte, hot)
	for i := range pages {
		pages[i] = make([]byte, PageSize)
		g.fillStruct(pages[i])
	}
	w := &workload{}
	type span struct{ start, end, page int }
	var spans []span
	for range steps {
		i := g.r.IntN(hot)
		switch x := g.r.IntN(10); {
		case x < 6:
			for n := 1 + g.r.IntN(3); n > 0; n-- {
				p := g.r.IntN(PageSize - 8)
				binary.LittleEndian.PutUint64(pages[i][p:], g.r.Uint64())
			}
		case x < 8:
			copy(pages[i], pages[g.r.IntN(hot)])
		default:
			g.fresh(pages[i])
		}
		start := len(w.raw)
		w.raw = binary.BigEndian.AppendUint64(w.raw, uint64(i*PageSize)|0x28)
		spans = append(spans, span{start, len(w.raw), -1})
		start = len(w.raw)
		w.raw = append(w.raw, pages[i]...)
		spans = append(spans, span{start, len(w.raw), i})
		w.pages++
	}
	for _, s := range spans {
		it := item{opaque: s.page < 0, bytes: w.raw[s.start:s.end:s.end]}
		if !it.opaque {
			it.block = []string{"pc.ram", "vga.vram"}[s.page%2]
			it.addr = uint64(s.page) * PageSize
		}
		w.items = append(w.items, it)
	}
	return w
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5eed)) }
