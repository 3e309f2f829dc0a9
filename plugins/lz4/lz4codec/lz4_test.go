package lz4codec_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime/debug"
	"testing"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/plugins/lz4/lz4codec"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var levels = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}

func TestConformance(t *testing.T) {
	conformance.TestCodec(t, lz4codec.New(), codectest.Conformance())
}

// The framing is part of the format: pin it.
func TestFraming(t *testing.T) {
	c := lz4codec.New()
	enc, err := c.Encode([]byte("p"), []byte("abc"), lz4codec.LevelFast)
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{'p', 0x00, 3, 'a', 'b', 'c'}; !bytes.Equal(enc, want) {
		t.Fatalf("3 incompressible bytes: got % x, want % x (stored)", enc, want)
	}
	src := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	enc, err = c.Encode(nil, src, lz4codec.LevelFast)
	if err != nil {
		t.Fatal(err)
	}
	n, k := binary.Uvarint(enc[1:])
	if enc[0] != 0x01 || n != uint64(len(src)) || len(enc) > 1+k+200 {
		t.Fatalf("compressible block: kind %#x, length %d, %d bytes", enc[0], n, len(enc))
	}
}

func TestDeclaredLengthChecks(t *testing.T) {
	c := lz4codec.New()
	huge := append([]byte{0x01}, binary.AppendUvarint(nil, 1<<40)...)
	huge = append(huge, 0x10, 'x')
	if _, err := c.Decode(nil, huge, 1<<20); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("1 TiB declared: got %v, want ErrTooLarge", err)
	}
	// Within maxSize, but a 2-byte payload cannot expand to 1 MiB.
	short := append([]byte{0x01}, binary.AppendUvarint(nil, 1<<20)...)
	short = append(short, 0x10, 'x')
	if _, err := c.Decode(nil, short, 1<<20); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("impossible expansion: got %v, want ErrCorruptInput", err)
	}
	stored := []byte{0x00, 5, 'a', 'b'}
	if _, err := c.Decode(nil, stored, 100); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("short stored block: got %v, want ErrCorruptInput", err)
	}
	if _, err := c.Decode(nil, []byte{0x07, 0}, 100); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("unknown kind: got %v, want ErrCorruptInput", err)
	}
}

func TestHCBeatsFast(t *testing.T) {
	c := lz4codec.New()
	src := codectest.RealMemory(256 << 10)
	fast, _ := c.Encode(nil, src, lz4codec.LevelFast)
	hc, _ := c.Encode(nil, src, lz4codec.LevelHC9)
	if len(hc) >= len(fast) {
		t.Fatalf("HC9 %d bytes, fast %d bytes", len(hc), len(fast))
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	codectest.SkipAllocsUnderRace(t)
	// A GC empties the sync.Pools the codec reuses its state from, and
	// the refill is one allocation the steady state does not have (a
	// clean-clone CI run saw "1 allocation in 16 calls" at level 2).
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	c := lz4codec.New()
	src := codectest.RealMemory(64 << 10)
	for _, l := range levels {
		enc, _ := c.Encode(nil, src, l)
		codectest.Warm(func() { _, _ = c.Encode(nil, src, l); _, _ = c.Decode(nil, enc, len(src)) })
		// AllocsPerRun truncates the average: with 1 run, any allocation
		// at all shows; the warm-up makes every run the steady state.
		dst := make([]byte, 0, c.Capabilities().Bound.Max(len(src)))
		if a := testing.AllocsPerRun(1, func() {
			for range 16 {
				dst, _ = c.Encode(dst[:0], src, l)
			}
		}); a != 0 {
			t.Errorf("level %d: Encode allocates (%v allocations in 16 calls)", l, a)
		}
		out := make([]byte, 0, len(src))
		if a := testing.AllocsPerRun(1, func() {
			for range 16 {
				out, _ = c.Decode(out[:0], enc, len(src))
			}
		}); a != 0 {
			t.Errorf("level %d: Decode allocates (%v allocations in 16 calls)", l, a)
		}
	}
}

func FuzzDecode(f *testing.F) {
	codectest.Fuzz(f, lz4codec.New(), []int{lz4codec.LevelFast, lz4codec.LevelHC1, lz4codec.LevelHC9})
}

func BenchmarkCodec(b *testing.B) {
	codectest.Bench(b, lz4codec.New(), []int{lz4codec.LevelFast, lz4codec.LevelHC1, 4, lz4codec.LevelHC9})
}
