package pagestage

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/zeebo/xxh3"
)

var (
	fuzzOnce    sync.Once
	fuzzSession []Batch
	fuzzOut     [][]byte // decoded bytes of each session batch
	fuzzKnown   knownMap
)

func fuzzSetup(t testing.TB) {
	fuzzOnce.Do(func() {
		fuzzSession = sessionBatches(t, 36, 12<<10)
		d := NewDecoder(DecoderOptions{})
		for _, b := range fuzzSession {
			out, err := d.Decode(nil, b)
			if err != nil {
				t.Fatal(err)
			}
			fuzzOut = append(fuzzOut, out)
		}
		p := testPage(42)
		fuzzKnown = knownMap{PageHash(xxh3.Hash128(p)): p}
	})
}

// FuzzDecoder applies a prefix of a real session, then the fuzzed batch,
// then the session's next batch. Whatever the input: no panic; on error the
// output is untouched and the error carries a sentinel; on success the next
// real batch either fails or decodes to exactly its own bytes.
func FuzzDecoder(f *testing.F) {
	fuzzSetup(f)
	for k, b := range fuzzSession {
		f.Add(uint8(k), b.Compressible, b.Stored)
	}
	// A known-page record and a batch with every flag, as seeds the
	// mutator could not easily find.
	kp := testPage(42)
	h := xxh3.Hash128(kp).Bytes()
	c := newCraft(0).params(4, 2, 2).raw(kindBlock).uv(2).raw('p', 'c')
	c.raw(kindKnown|flagIndex|flagAddr).uv(0, 0)
	c.comp = append(c.comp, h[:]...)
	c.raw(kindDup|flagAddr|flagSameBlock).uv(0, 1).raw(kindDelta|flagAddr|flagSameBlock).uv(zigzag(^uint64(0)), 3, 0, 1, 7)
	kp2 := bytes.Clone(kp)
	kp2[0] ^= 7
	c.raw(kindZero).uv(2).raw(kindOpaque).uv(2).raw(1, 2)
	f.Add(uint8(0), c.want(kp, kp, kp2, make([]byte, 2*PageSize), []byte{1, 2}).batch().Compressible, []byte(nil))

	f.Fuzz(func(t *testing.T, prefix uint8, comp, stored []byte) {
		fuzzSetup(t)
		k := int(prefix) % len(fuzzSession)
		d := NewDecoder(DecoderOptions{MaxBatchBytes: 1 << 20, MaxDedupEntries: 1024, MaxDeltaCacheBytes: 4 << 20, Known: fuzzKnown})
		var out []byte
		var err error
		for i := range k {
			if out, err = d.Decode(out, fuzzSession[i]); err != nil {
				t.Fatalf("real batch %d: %v", i, err)
			}
		}
		base := len(out)
		got, err := d.Decode(out, Batch{Compressible: comp, Stored: stored})
		if err != nil {
			if len(got) != base {
				t.Fatalf("failed decode changed the output by %d bytes", len(got)-base)
			}
			for _, s := range []error{ErrCorrupt, ErrUnknownBase, ErrChecksum, ErrOutOfOrder, ErrLimit} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("error without a sentinel: %v", err)
		}
		if bytes.Equal(comp, fuzzSession[k].Compressible) && bytes.Equal(stored, fuzzSession[k].Stored) &&
			!bytes.Equal(got[base:], fuzzOut[k]) {
			t.Fatal("a real batch decoded to other bytes")
		}
		if k+1 < len(fuzzSession) {
			next, err := d.Decode(nil, fuzzSession[k+1])
			if err == nil && !bytes.Equal(next, fuzzOut[k+1]) {
				t.Fatal("the batch after a fuzzed one decoded to wrong bytes")
			}
		}
	})
}
