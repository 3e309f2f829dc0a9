package s2codec_test

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var levels = []int{s2codec.LevelFast, s2codec.LevelBetter, s2codec.LevelBest}

func TestConformance(t *testing.T) {
	conformance.TestCodec(t, s2codec.New(), codectest.Conformance())
}

// A header claiming 4 GiB must be refused before any allocation.
func TestHugeDeclaredLength(t *testing.T) {
	c := s2codec.New()
	bomb := binary.AppendUvarint(nil, 0xffffffff)
	bomb = append(bomb, 0, 0, 0, 0)
	// Count bytes, not allocations: the race detector adds small ones.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := c.Decode(nil, bomb, 1<<20); !errors.Is(err, sdk.ErrTooLarge) {
			t.Fatalf("got %v, want ErrTooLarge", err)
		}
	}
	runtime.ReadMemStats(&after)
	if perCall := (after.TotalAlloc - before.TotalAlloc) / 10; perCall > 4096 { // the wrapped error only
		t.Fatalf("%d bytes allocated per refusal of a 4 GiB header", perCall)
	}
}

// A block whose body decodes to fewer bytes than its header claims is
// damage, not a short success.
func TestLengthMismatch(t *testing.T) {
	c := s2codec.New()
	enc, err := c.Encode(nil, []byte("hello, hello, hello, hello"), s2codec.LevelFast)
	if err != nil {
		t.Fatal(err)
	}
	enc[0]++ // the uvarint length: claim one byte more
	if _, err := c.Decode(nil, enc, 1<<20); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("got %v, want ErrCorruptInput", err)
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	codectest.SkipAllocsUnderRace(t)
	c := s2codec.New()
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
	codectest.Fuzz(f, s2codec.New(), levels)
}

func BenchmarkCodec(b *testing.B) {
	codectest.Bench(b, s2codec.New(), levels)
}
