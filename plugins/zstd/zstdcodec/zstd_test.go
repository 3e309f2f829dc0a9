package zstdcodec_test

import (
	"bytes"
	"errors"
	"math"
	"runtime"
	"testing"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var levels = []int{zstdcodec.LevelFastest, zstdcodec.LevelDefault, zstdcodec.LevelBetter, zstdcodec.LevelBest}

func TestConformance(t *testing.T) {
	conformance.TestCodec(t, zstdcodec.New(), codectest.Conformance())
}

// streamFrame encodes src with zstd's streaming writer, which does not
// know the size in advance and so writes a frame without a content size:
// the input a foreign zstd producer (or an attacker) can send.
func streamFrame(t testing.TB, src []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(src); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var h zstd.Header
	if err := h.Decode(buf.Bytes()); err != nil || h.HasFCS {
		t.Fatalf("streaming frame should lack a content size (err %v, HasFCS %v)", err, h.HasFCS)
	}
	return buf.Bytes()
}

func TestDecodeFrameWithoutContentSize(t *testing.T) {
	c := zstdcodec.New()
	src := codectest.RealMemory(3 << 20)
	frame := streamFrame(t, src)

	out, err := c.Decode([]byte("p"), frame, len(src))
	if err != nil {
		t.Fatalf("decode with maxSize = size: %v", err)
	}
	if !bytes.Equal(out[1:], src) || out[0] != 'p' {
		t.Fatal("decoded bytes differ")
	}
	if _, err := c.Decode(nil, frame, len(src)-1); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("maxSize one short: got %v, want ErrTooLarge", err)
	}
}

// Bombs without a declared size must stop at the limit without
// allocating their whole output: one of zeros (RLE blocks, whose sizes the
// block headers give away) and one of real-memory-like data (compressed
// blocks, decoded under the limit until it runs out of room).
func TestBombWithoutContentSize(t *testing.T) {
	c := zstdcodec.New()
	for _, src := range [][]byte{make([]byte, 64<<20), codectest.RealMemory(16 << 20)} {
		bomb := streamFrame(t, src)
		const limit = 1 << 20
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := c.Decode(nil, bomb, limit)
		runtime.ReadMemStats(&after)
		if !errors.Is(err, sdk.ErrTooLarge) {
			t.Fatalf("%d-byte frame: got %v, want ErrTooLarge", len(bomb), err)
		}
		// The limit-sized buffer, plus the copy klauspost makes when the
		// last block overflows it (how it detects the limit).
		if n := after.TotalAlloc - before.TotalAlloc; n > 4*limit {
			t.Fatalf("%d-byte frame: allocated %d bytes with a %d-byte limit", len(bomb), n, limit)
		}
	}
}

// Without a content size the buffer is sized from the block headers, not
// from maxSize.
func TestNoContentSizeSizedFromBlocks(t *testing.T) {
	c := zstdcodec.New()
	src := codectest.RealMemory(1 << 20)
	frame := streamFrame(t, src)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	out, err := c.Decode(nil, frame, 1<<40)
	runtime.ReadMemStats(&after)
	if err != nil || !bytes.Equal(out, src) {
		t.Fatalf("decode: %v", err)
	}
	// Proportional to the output, not to maxSize (1 TiB here); the slack
	// covers decoder state (larger under -race).
	if n := after.TotalAlloc - before.TotalAlloc; n > 3*uint64(len(src))+256<<10 {
		t.Fatalf("allocated %d bytes for a %d-byte output", n, len(src))
	}
}

func TestDeclaredSizeOverLimitRejectedUpFront(t *testing.T) {
	c := zstdcodec.New()
	enc, err := c.Encode(nil, make([]byte, 8<<20), zstdcodec.LevelFastest)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := c.Decode(nil, enc, 4096); !errors.Is(err, sdk.ErrTooLarge) {
			t.Fatalf("got %v, want ErrTooLarge", err)
		}
	}
	runtime.ReadMemStats(&after)
	// Only the error values are allocated: the declared 8 MiB never is.
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Fatalf("rejecting a declared size over the limit allocated %d bytes in 10 calls", n)
	}
}

func TestConcatenatedFrames(t *testing.T) {
	c := zstdcodec.New()
	a, b := []byte("first frame "), codectest.RealMemory(100<<10)
	enc, _ := c.Encode(nil, a, zstdcodec.LevelFastest)
	enc, _ = c.Encode(enc, b, zstdcodec.LevelBest)
	out, err := c.Decode(nil, enc, len(a)+len(b))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, append(bytes.Clone(a), b...)) {
		t.Fatal("concatenated frames decoded wrong")
	}
	if _, err := c.Decode(nil, enc, len(a)+len(b)-1); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

func TestLevelsDiffer(t *testing.T) {
	c := zstdcodec.New()
	src := codectest.RealMemory(1 << 20)
	sizes := map[int]int{}
	for _, l := range levels {
		enc, err := c.Encode(nil, src, l)
		if err != nil {
			t.Fatal(err)
		}
		sizes[l] = len(enc)
	}
	if sizes[zstdcodec.LevelBest] >= sizes[zstdcodec.LevelFastest] {
		t.Fatalf("best (%d bytes) should beat fastest (%d bytes)", sizes[zstdcodec.LevelBest], sizes[zstdcodec.LevelFastest])
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	codectest.SkipAllocsUnderRace(t)
	c := zstdcodec.New()
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
	c := zstdcodec.New()
	codectest.Fuzz(f, c, levels, streamFrame(f, []byte("a frame without a content size")))
}

func BenchmarkCodec(b *testing.B) {
	codectest.Bench(b, zstdcodec.New(), levels)
}

// A forged content size with "no limit" must not be allocated up front.
func TestForgedContentSizeNoLimit(t *testing.T) {
	c := zstdcodec.New()
	forged := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xc4}  // magic, FHD: FCS 8 bytes, checksum, no single segment
	forged = append(forged, 0x00)                   // window descriptor: 1 KiB
	forged = append(forged, 0, 0, 0, 0, 0, 1, 0, 0) // FCS = 1 TiB, little-endian
	forged = append(forged, 0x01, 0x00, 0x00)       // last raw block of 0 bytes
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := c.Decode(nil, forged, math.MaxInt)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("got %v, want ErrCorruptInput", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Fatalf("allocated %d bytes for a forged 1 TiB header", n)
	}
	// The same header as a second frame, behind a valid one: the limit
	// grows only as far as the input could possibly decode to.
	first, err := c.Encode(nil, codectest.RealMemory(64<<10), zstdcodec.LevelFastest)
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&before)
	_, err = c.Decode(nil, append(first, forged...), math.MaxInt)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("second frame: got %v, want ErrCorruptInput", err)
	}
	if n, most := after.TotalAlloc-before.TotalAlloc, uint64(len(first)+len(forged))*(128<<10)/4*2; n > most {
		t.Fatalf("allocated %d bytes, over twice the %d-byte input's possible output", n, len(first)+len(forged))
	}
}
