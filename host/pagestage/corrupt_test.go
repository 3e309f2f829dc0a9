package pagestage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/xxh3"
)

// craft builds a batch record by record, with a correct header for the
// bytes it is declared to decode to, so each case trips one rule only.
type craft struct {
	comp, stored, out []byte
	seq               uint64
	decodedLen        int // -1: len(out)
}

func newCraft(seq uint64) *craft {
	return &craft{comp: make([]byte, headerSize), seq: seq, decodedLen: -1}
}

func (c *craft) params(entries, sets, ways uint64) *craft {
	return c.raw(kindParams).uv(PageSize, entries, sets, ways)
}

func (c *craft) raw(b ...byte) *craft { c.comp = append(c.comp, b...); return c }

func (c *craft) uv(vs ...uint64) *craft {
	for _, v := range vs {
		c.comp = binary.AppendUvarint(c.comp, v)
	}
	return c
}

func (c *craft) want(b ...[]byte) *craft {
	for _, x := range b {
		c.out = append(c.out, x...)
	}
	return c
}

func (c *craft) batch() Batch {
	n := len(c.out)
	if c.decodedLen >= 0 {
		n = c.decodedLen
	}
	putHeader(c.comp, header{version: formatVersion, decodedLen: uint32(n), storedLen: uint32(len(c.stored)),
		seq: c.seq, sum: xxh3.Hash(c.out)})
	return Batch{Compressible: c.comp, Stored: c.stored}
}

func testPage(seed byte) []byte {
	p := make([]byte, PageSize)
	for i := range p {
		p[i] = seed + byte(i/16)
	}
	return p
}

func TestCraftedBatches(t *testing.T) {
	p1, p2, p3 := testPage(1), testPage(2), testPage(3)
	zero := make([]byte, PageSize)
	p1x := bytes.Clone(p1)
	p1x[10] ^= 0x55
	// start is a valid batch 0: a ring of 2, a cache of 1x2, block "a",
	// then p1 (indexed, cached at a:5) and p2 (indexed, cached at a:6).
	start := func() *craft {
		c := newCraft(0).params(2, 1, 2)
		c.raw(kindBlock).uv(1).raw('a')
		c.raw(kindFull|flagIndex|flagAddr).uv(0, zigzag(5)).raw(p1...)
		c.raw(kindFull | flagIndex | flagAddr | flagSameBlock).uv(0).raw(p2...)
		return c.want(p1, p2)
	}
	cases := []struct {
		name    string
		batches []*craft
		err     error // of the last batch; nil: all succeed
	}{
		{"valid start", []*craft{start()}, nil},
		{"dup newest and oldest", []*craft{start().raw(kindDup).uv(1).raw(kindDup).uv(2).want(p2, p1)}, nil},
		{"delta across batches", []*craft{start(), newCraft(1).raw(kindDelta|flagAddr).uv(0, zigzag(5), 3, 10, 1, 0x55).want(p1x)}, nil},
		{"dup after eviction", []*craft{start().raw(kindFull|flagIndex).raw(p3...).raw(kindDup).uv(2).want(p3, p2)}, nil},
		{"no params", []*craft{newCraft(0).raw(kindOpaque).uv(1).raw(9).want([]byte{9})}, ErrCorrupt},
		{"empty first batch", []*craft{newCraft(0)}, ErrCorrupt},
		{"params twice", []*craft{start().params(2, 1, 2)}, ErrCorrupt},
		{"params in batch 1", []*craft{start(), newCraft(1).params(2, 1, 2)}, ErrCorrupt},
		{"page size", []*craft{newCraft(0).raw(kindParams).uv(8192, 0, 0, 0)}, ErrCorrupt},
		{"ring over limit", []*craft{newCraft(0).params(DefaultMaxDedupEntries+1, 0, 0)}, ErrLimit},
		{"cache over limit", []*craft{newCraft(0).params(0, DefaultMaxDeltaCacheBytes/PageSize, 4)}, ErrLimit},
		{"sets without ways", []*craft{newCraft(0).params(0, 4, 0)}, ErrCorrupt},
		{"too many ways", []*craft{newCraft(0).params(0, 1, maxWays+1)}, ErrCorrupt},
		{"params truncated", []*craft{newCraft(0).raw(kindParams).uv(PageSize, 1)}, ErrCorrupt},
		{"unknown kind", []*craft{start().raw(0x1f)}, ErrCorrupt},
		{"kind zero", []*craft{start().raw(0)}, ErrCorrupt},
		{"flags on opaque", []*craft{start().raw(kindOpaque | flagIndex).uv(1).raw(1).want([]byte{1})}, ErrCorrupt},
		{"empty opaque", []*craft{start().raw(kindOpaque).uv(0)}, ErrCorrupt},
		{"opaque past section", []*craft{start().raw(kindOpaque).uv(100).raw(1, 2, 3)}, ErrCorrupt},
		{"opaque past declared length", func() []*craft {
			c := start().raw(kindOpaque).uv(3).raw(1, 2, 3).want([]byte{1, 2, 3})
			c.decodedLen = 2 * PageSize
			return []*craft{c}
		}(), ErrCorrupt},
		{"declared length not reached", func() []*craft {
			c := start()
			c.decodedLen = 3 * PageSize
			return []*craft{c}
		}(), ErrCorrupt},
		{"zero run of 0", []*craft{start().raw(kindZero).uv(0)}, ErrCorrupt},
		{"zero run past declared length", []*craft{start().raw(kindZero).uv(1 << 40)}, ErrCorrupt},
		{"zero run", []*craft{start().raw(kindZero).uv(2).want(zero, zero)}, nil},
		{"full page truncated", []*craft{start().raw(kindFull).raw(p3[:100]...).want(p3)}, ErrCorrupt},
		{"stored page missing", []*craft{start().raw(kindStored).want(p3)}, ErrCorrupt},
		{"stored bytes unused", func() []*craft {
			c := start()
			c.stored = p3
			return []*craft{c}
		}(), ErrCorrupt},
		{"stored page", func() []*craft {
			c := start().raw(kindStored).want(p3)
			c.stored = p3
			return []*craft{c}
		}(), nil},
		{"dup distance 0", []*craft{start().raw(kindDup).uv(0).want(p1)}, ErrUnknownBase},
		{"dup past ring", []*craft{start().raw(kindDup).uv(3).want(p1)}, ErrUnknownBase},
		{"dup evicted", []*craft{start().raw(kindFull|flagIndex).raw(p3...).raw(kindDup).uv(3).want(p3, p1)}, ErrUnknownBase},
		{"dup on empty ring", []*craft{newCraft(0).params(2, 0, 0).raw(kindDup).uv(1).want(p1)}, ErrUnknownBase},
		{"dup with index flag", []*craft{start().raw(kindDup | flagIndex).uv(1).want(p2)}, ErrCorrupt},
		{"index without ring", []*craft{newCraft(0).params(0, 0, 0).raw(kindFull | flagIndex).raw(p1...).want(p1)}, ErrCorrupt},
		{"address without cache", []*craft{newCraft(0).params(0, 0, 0).raw(kindBlock).uv(1).raw('a').raw(kindFull|flagAddr).uv(0, 0).raw(p1...).want(p1)}, ErrCorrupt},
		{"delta without address", []*craft{start().raw(kindDelta).uv(0).want(p1)}, ErrCorrupt},
		{"delta uncached", []*craft{start().raw(kindDelta|flagAddr).uv(0, zigzag(99), 0).want(p1)}, ErrUnknownBase},
		{"delta evicted", []*craft{start().raw(kindFull|flagAddr|flagSameBlock).uv(0).raw(p3...).raw(kindDelta|flagAddr).uv(0, zigzag(^uint64(2)), 0).want(p3, p1)}, ErrUnknownBase},
		{"delta span past page", []*craft{start().raw(kindDelta|flagAddr).uv(0, zigzag(^uint64(1)), 4).raw(0xff, 0x1f, 2, 1).want(p1)}, ErrCorrupt},
		{"delta length past section", []*craft{start().raw(kindDelta|flagAddr).uv(0, zigzag(^uint64(1)), 50, 0, 1).want(p1)}, ErrCorrupt},
		{"same block in a fresh batch", []*craft{start(), newCraft(1).raw(kindFull | flagAddr | flagSameBlock).uv(5).raw(p1...).want(p1)}, ErrCorrupt},
		{"same block without address", []*craft{start().raw(kindFull | flagSameBlock).raw(p1...).want(p1)}, ErrCorrupt},
		{"undefined block", []*craft{start().raw(kindFull|flagAddr).uv(1, 0).raw(p1...).want(p1)}, ErrCorrupt},
		{"block index truncated", []*craft{start().raw(kindFull|flagAddr, 0x80)}, ErrCorrupt},
		{"block name too long", []*craft{start().raw(kindBlock).uv(256).raw(make([]byte, 256)...)}, ErrCorrupt},
		{"block name truncated", []*craft{start().raw(kindBlock).uv(5).raw('a')}, ErrCorrupt},
		{"known without store", []*craft{start().raw(kindKnown).raw(make([]byte, 16)...).want(p1)}, ErrUnknownBase},
		{"known hash truncated", []*craft{start().raw(kindKnown).raw(1, 2).want(p1)}, ErrCorrupt},
		{"page past declared length", func() []*craft {
			c := start().raw(kindFull).raw(p3...).want(p3)
			c.decodedLen = 2*PageSize + 10
			return []*craft{c}
		}(), ErrCorrupt},
		{"checksum", func() []*craft {
			c := start()
			c.out[7] ^= 1
			return []*craft{c}
		}(), ErrChecksum},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := NewDecoder(DecoderOptions{})
			var out, want []byte
			var err error
			for i, cb := range c.batches {
				out, err = d.Decode(out, cb.batch())
				if i < len(c.batches)-1 && err != nil {
					t.Fatalf("batch %d: %v", i, err)
				}
				if err == nil {
					want = append(want, cb.out...)
				}
			}
			if !bytes.Equal(out, want) {
				t.Fatalf("decoded bytes are not the verified batches' bytes")
			}
			if c.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, c.err) {
				t.Fatalf("got %v, want %v", err, c.err)
			}
			t.Log(err)
			if _, err2 := d.Decode(nil, start().batch()); !errors.Is(err2, ErrFailed) && !errors.Is(err2, ErrOutOfOrder) {
				t.Fatalf("decoder usable after a failed batch: %v", err2)
			}
		})
	}
}

// Errors found on the header alone change nothing, so the right batch can
// still be applied.
func TestHeaderErrorsAreNotSticky(t *testing.T) {
	w := small()
	batches, _ := encodeAll(t, w, Options{}, 2<<20)
	d := NewDecoder(DecoderOptions{MaxBatchBytes: 3 << 20})
	var out []byte
	for i, b := range batches {
		big := newCraft(uint64(i))
		big.decodedLen = 4 << 20
		bad := []struct {
			b   Batch
			err error
		}{
			{batches[(i+1)%len(batches)], ErrOutOfOrder},
			{Batch{Compressible: b.Compressible[:headerSize-1]}, ErrCorrupt},
			{Batch{Compressible: append([]byte{2}, b.Compressible[1:]...), Stored: b.Stored}, ErrCorrupt},
			{Batch{Compressible: append([]byte{1, 1}, b.Compressible[2:]...), Stored: b.Stored}, ErrCorrupt},
			{Batch{Compressible: b.Compressible, Stored: append(b.Stored, 0)}, ErrCorrupt},
			{big.batch(), ErrLimit},
		}
		for _, x := range bad {
			if _, err := d.Decode(nil, x.b); !errors.Is(err, x.err) {
				t.Fatalf("before batch %d: got %v, want %v", i, err, x.err)
			}
		}
		var err error
		if out, err = d.Decode(out, b); err != nil {
			t.Fatalf("batch %d after rejected batches: %v", i, err)
		}
	}
	if !bytes.Equal(out, w.raw) {
		t.Fatal("decoded bytes differ")
	}
}

// sessionBatches is a short real session with every record kind, for the
// corruption tests and (with small batches, which the fuzzer mutates and
// minimizes much faster) the fuzz seeds.
func sessionBatches(t testing.TB, pages, batchBytes int) []Batch {
	cfg := smallWorkload
	cfg.blocks = []blockSpec{{"pc.ram", pages}, {"vga.vram", pages / 6}}
	cfg.passes, cfg.dirty, cfg.seed = 4, 0.5, 11
	batches, s := encodeAll(t, genWorkload(cfg), Options{DedupEntries: pages / 3, DeltaCacheBytes: int64(pages) * PageSize}, batchBytes)
	for k := PageZero; k <= PageFull; k++ {
		if k != PageKnown && s.Pages[k] == 0 {
			t.Fatalf("session without %v pages: %v", k, s)
		}
	}
	return batches
}

// Whatever is flipped or cut, the decoder returns only the bytes the
// encoder was given, or an error; never a panic, never wrong bytes.
func TestCorruptedSessions(t *testing.T) {
	batches := sessionBatches(t, 96, 96<<10)
	want, _ := decodeAll(t, batches, DecoderOptions{})
	r := rand.New(rand.NewPCG(7, 7))
	mutations := 400
	if testing.Short() || raceEnabled {
		mutations = 100
	}
	failed := 0
	for m := range mutations {
		bs := make([]Batch, len(batches))
		copy(bs, batches)
		k := r.IntN(len(bs))
		c := bytes.Clone(bs[k].Compressible)
		s := bytes.Clone(bs[k].Stored)
		switch m % 4 {
		case 0, 1: // flip a byte of the compressible section, mostly in records
			c[r.IntN(len(c))] ^= byte(1 + r.IntN(255))
		case 2: // truncate a section
			if len(s) > 0 && r.IntN(2) == 0 {
				s = s[:r.IntN(len(s))]
			} else {
				c = c[:r.IntN(len(c))]
			}
		case 3: // flip a byte of the stored section, or of the header
			if len(s) > 0 {
				s[r.IntN(len(s))] ^= 0x40
			} else {
				c[r.IntN(headerSize)] ^= 0x40
			}
		}
		bs[k] = Batch{Compressible: c, Stored: s}
		d := NewDecoder(DecoderOptions{})
		var out []byte
		var err error
		for _, b := range bs {
			if out, err = d.Decode(out, b); err != nil {
				break
			}
		}
		if !bytes.Equal(out, want[:len(out)]) {
			t.Fatalf("mutation %d of batch %d: wrong bytes returned", m, k)
		}
		if err != nil {
			failed++
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrUnknownBase) &&
				!errors.Is(err, ErrOutOfOrder) && !errors.Is(err, ErrLimit) {
				t.Fatalf("mutation %d: error without a sentinel: %v", m, err)
			}
		}
	}
	if failed < mutations*9/10 {
		t.Fatalf("only %d of %d mutations detected", failed, mutations)
	}
}

// Every proper prefix of a batch is rejected.
func TestTruncatedBatches(t *testing.T) {
	batches := sessionBatches(t, 96, 96<<10)
	b := batches[0]
	// Every cut in the header and the first records, then a sample.
	step := func(n int) int {
		if n < 512 {
			return 1
		}
		return 61
	}
	for n := 0; n < len(b.Compressible); n += step(n) {
		if _, err := NewDecoder(DecoderOptions{}).Decode(nil, Batch{Compressible: b.Compressible[:n], Stored: b.Stored}); err == nil {
			t.Fatalf("compressible section cut to %d of %d bytes accepted", n, len(b.Compressible))
		}
	}
	for n := 0; n < len(b.Stored); n += PageSize / 4 {
		if _, err := NewDecoder(DecoderOptions{}).Decode(nil, Batch{Compressible: b.Compressible, Stored: b.Stored[:n]}); err == nil {
			t.Fatalf("stored section cut to %d of %d bytes accepted", n, len(b.Stored))
		}
	}
}
