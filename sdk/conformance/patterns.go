package conformance

import (
	"encoding/binary"
	"math/bits"
)

// PageSize is the guest page size the page-structured patterns use.
const PageSize = 4096

// Pattern is a named, deterministic data generator. Page i of a pattern
// depends only on the seed and i, so a shorter buffer is a prefix of a
// longer one filled with the same seed, and benchmarks in different
// processes see the same bytes.
type Pattern struct {
	Name        string
	Description string
	page        func(p []byte, r *rng, seed, index uint64)
}

// Fill overwrites b with the pattern for seed.
func (p Pattern) Fill(b []byte, seed uint64) {
	for i := 0; len(b) > 0; i++ {
		n := min(len(b), PageSize)
		r := newRNG(seed, uint64(i))
		// The capacity is cut to the page so a generator that appends past
		// the page end reallocates instead of writing past len(b).
		p.page(b[:n:n], &r, seed, uint64(i))
		b = b[n:]
	}
}

// Bytes returns n bytes of the pattern for seed.
func (p Pattern) Bytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	p.Fill(b, seed)
	return b
}

// Names of the patterns Patterns returns.
const (
	PatternRandom     = "random"
	PatternZeros      = "zeros"
	PatternRepeating  = "repeating"
	PatternSparse     = "sparse"
	PatternText       = "text"
	PatternRealMemory = "real-memory-like"
)

// Patterns returns the kit's data patterns in a fixed order: random, zeros,
// repeating, sparse, text and real-memory-like.
func Patterns() []Pattern {
	return []Pattern{
		{PatternRandom, "uniformly random bytes (incompressible)", randomPage},
		{PatternZeros, "all zero bytes", zeroPage},
		{PatternRepeating, "one random phrase of 1..255 bytes (fixed by the seed) repeated", repeatingPage},
		{PatternSparse, "zero pages with 1..16 random bytes set per page", sparsePage},
		{PatternText, "English-like words, punctuation and log lines", textPage},
		{PatternRealMemory, "a seeded mix of 4 KiB pages as found in guest RAM: zero, text, " +
			"pointer tables, small-integer arrays, machine code, random", realMemoryPage},
	}
}

// PatternByName returns the pattern with that name.
func PatternByName(name string) (Pattern, bool) {
	for _, p := range Patterns() {
		if p.Name == name {
			return p, true
		}
	}
	return Pattern{}, false
}

// rng is splitmix64: tiny, fast and fully specified, so patterns never
// change with the Go release (math/rand's helpers make no such promise).
type rng struct{ s uint64 }

func newRNG(seed, page uint64) rng {
	r := rng{s: seed ^ 0x9e3779b97f4a7c15}
	r.s ^= r.next() + page*0xbf58476d1ce4e5b9
	return r
}

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	z := r.s
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// intn returns a value in [0, n); n > 0.
func (r *rng) intn(n int) int {
	hi, _ := bits.Mul64(r.next(), uint64(n))
	return int(hi)
}

func (r *rng) fill(b []byte) {
	for len(b) >= 8 {
		binary.LittleEndian.PutUint64(b, r.next())
		b = b[8:]
	}
	if len(b) > 0 {
		v := r.next()
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
	}
}

func randomPage(p []byte, r *rng, _, _ uint64) { r.fill(p) }

func zeroPage(p []byte, _ *rng, _, _ uint64) { clear(p) }

// repeatingPage repeats one phrase whose length (1..255) and bytes depend
// on the seed alone; the phase runs on across pages, so the whole buffer is
// one repetition.
func repeatingPage(p []byte, _ *rng, seed, index uint64) {
	var phrase [255]byte
	pr := newRNG(seed, ^uint64(0))
	period := 1 + pr.intn(len(phrase))
	pr.fill(phrase[:period])
	off := int((index * PageSize) % uint64(period))
	for i := range p {
		p[i] = phrase[off]
		off++
		if off == period {
			off = 0
		}
	}
}

func sparsePage(p []byte, r *rng, _, _ uint64) {
	clear(p)
	n := 1 + r.intn(16)
	for range n {
		// Positions are drawn over a whole page so a cut-short last page
		// holds the same bytes as the full one.
		if i := r.intn(PageSize); i < len(p) {
			p[i] = byte(r.next()) | 1
		} else {
			r.next()
		}
	}
}

var words = []string{
	"the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with",
	"be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which",
	"but", "have", "an", "had", "they", "you", "were", "their", "one", "all", "we",
	"can", "her", "has", "there", "been", "if", "more", "when", "will", "would", "who",
	"so", "no", "memory", "page", "migration", "kernel", "process", "network", "buffer",
	"device", "virtual", "machine", "error", "request", "status", "connection", "file",
	"system", "user", "server", "client", "time", "data", "value", "return", "function",
}

var logLevels = []string{"INFO", "WARN", "DEBUG", "ERROR"}

func textPage(p []byte, r *rng, _, _ uint64) {
	b := p[:0]
	for len(b) < len(p) {
		if r.intn(8) == 0 {
			// A log line: timestamp-ish digits, a level, then words.
			b = appendDigits(b, uint64(1700000000+r.intn(1000000)))
			b = append(b, ' ')
			b = append(b, logLevels[r.intn(len(logLevels))]...)
			b = append(b, ' ')
		}
		nw := 4 + r.intn(12)
		for i := range nw {
			w := words[r.intn(len(words))]
			if i == 0 {
				b = append(b, w[0]-'a'+'A')
				b = append(b, w[1:]...)
			} else {
				b = append(b, w...)
			}
			if i < nw-1 {
				if r.intn(10) == 0 {
					b = append(b, ',')
				}
				b = append(b, ' ')
			}
		}
		b = append(b, ".\n"[r.intn(2)], '\n')
	}
	// The last append may have moved b to a new array (Fill cut p's
	// capacity); copy the page back.
	copy(p, b)
}

func appendDigits(b []byte, v uint64) []byte {
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// pointerPage writes 8-byte little-endian values that look like kernel and
// user pointers: a few high bases, 8- or 16-byte aligned, clustered, with
// NULLs and small tags between them.
func pointerPage(p []byte, r *rng) {
	bases := [...]uint64{0xffff888000000000, 0xffffffff81000000, 0x00007f0000000000, 0x0000555555554000}
	base := bases[r.intn(len(bases))] + uint64(r.intn(1<<20))<<12
	var i int
	for ; i+8 <= len(p); i += 8 {
		var v uint64
		switch k := r.intn(10); {
		case k < 6:
			v = base + uint64(r.intn(1<<16))<<4
		case k < 8:
			v = 0
		default:
			v = uint64(r.intn(64))
		}
		binary.LittleEndian.PutUint64(p[i:], v)
	}
	clear(p[i:])
}

// smallIntPage writes 32-bit arrays of counters and small values, as in
// kernel tables and application arrays.
func smallIntPage(p []byte, r *rng) {
	v := uint32(r.intn(1000))
	step := uint32(r.intn(3))
	var i int
	for ; i+4 <= len(p); i += 4 {
		if r.intn(4) == 0 {
			v = uint32(r.intn(256))
		} else {
			v += step
		}
		binary.LittleEndian.PutUint32(p[i:], v)
	}
	clear(p[i:])
}

// codePage writes x86-64-like machine code: common instruction templates
// with random registers, displacements and call targets, padded with nops
// and int3 between functions.
func codePage(p []byte, r *rng) {
	templates := [][]byte{
		{0x48, 0x89, 0x00},       // mov r/m64, r64 (modrm patched)
		{0x48, 0x8b, 0x00, 0x00}, // mov r64, [r+disp8]
		{0xe8, 0, 0, 0, 0},       // call rel32
		{0x0f, 0x1f, 0x44, 0x00, 0x00},
		{0x55},             // push rbp
		{0x5d},             // pop rbp
		{0xc3},             // ret
		{0x31, 0xc0},       // xor eax, eax
		{0x74, 0x00},       // je rel8
		{0x48, 0x83, 0xec}, // sub rsp, imm8 (imm follows)
		{0x85, 0xc0},       // test eax, eax
	}
	b := p[:0]
	var ins [8]byte
	for len(b) < len(p) {
		if r.intn(40) == 0 {
			for range 1 + r.intn(12) {
				b = append(b, 0xcc)
			}
			continue
		}
		t := templates[r.intn(len(templates))]
		n := copy(ins[:], t)
		switch t[0] {
		case 0x48:
			ins[2] = 0xc0 | byte(r.intn(64))
			if n == 3 && t[1] == 0x83 {
				ins[3] = byte(8 * (1 + r.intn(8)))
				n = 4
			}
			if n == 4 && t[1] == 0x8b {
				ins[2] = 0x40 | byte(r.intn(64))
				ins[3] = byte(8 * r.intn(16))
			}
		case 0xe8:
			binary.LittleEndian.PutUint32(ins[1:], uint32(int32(r.intn(1<<20)-1<<19)))
		case 0x74:
			ins[1] = byte(r.intn(64))
		}
		b = append(b, ins[:n]...)
	}
	copy(p, b)
}

// realMemoryPage picks a page kind from a fixed distribution. Like real
// guest RAM, some pages mix two kinds (slab pages, stacks next to data)
// and some repeat an earlier page exactly (about 5 % of non-zero pages;
// baselines.md measured 4.4 %). The weights give ratios close to what
// baselines.md measured on a real guest's migration stream.
func realMemoryPage(p []byte, r *rng, seed, index uint64) {
	k := r.intn(100)
	if k < 25 {
		clear(p)
		return
	}
	if index > 0 && r.intn(100) < 5 {
		// The same bytes as an earlier page: regenerate that page (its
		// content depends only on seed and index), up to 64 pages back.
		src := index - 1 - uint64(r.intn(int(min(index, 64))))
		sr := newRNG(seed, src)
		realMemoryPage(p, &sr, seed, src)
		return
	}
	if r.intn(100) < 35 {
		half := len(p) / 2
		memoryKind(p[:half], r, seed, index, r.intn(75))
		memoryKind(p[half:], r, seed, index, r.intn(75))
		return
	}
	memoryKind(p, r, seed, index, k-25)
}

// memoryKind fills p with one kind of non-zero memory; k in [0, 75).
func memoryKind(p []byte, r *rng, seed, index uint64, k int) {
	switch {
	case k < 15:
		textPage(p, r, seed, index)
	case k < 30:
		pointerPage(p, r)
	case k < 43:
		smallIntPage(p, r)
	case k < 57:
		codePage(p, r)
	case k < 62:
		sparsePage(p, r, seed, index)
	default:
		r.fill(p)
	}
}
