package plugin_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// slotIn is the input size of the slots Launch asks for.
const slotIn = 4 << 20

// launchTestCodec starts the testcodec fixture (see its doc comment) and
// returns it as a codec.Leaser.
func launchTestCodec(t *testing.T, bin string, disableShm bool) (*plugin.Instance, codec.Leaser) {
	t.Helper()
	inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: bin, DisableSharedMemory: disableShm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Close() })
	c, err := inst.Codec()
	if err != nil {
		t.Fatal(err)
	}
	l, ok := c.(codec.Leaser)
	if !ok {
		t.Fatal("a plugin codec does not offer codec.Leaser")
	}
	return inst, l
}

// wantXOR is testcodec's encoding of src at level 1..6.
func wantXOR(src []byte, level int) []byte {
	out := []byte{byte(level)}
	for _, b := range src {
		out = append(out, b^byte(level))
	}
	return out
}

func randBlock(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// roundTrip encodes src in a fresh Buffer built the way the pipeline does
// (appending to Input), checks the bytes, decodes them back in another
// Buffer, and reports the Input capacity the encode Buffer offered.
func roundTrip(t *testing.T, l codec.Leaser, src []byte, level int) int {
	t.Helper()
	b := l.Lease(len(src))
	defer b.Release()
	in := b.Input()
	room := cap(in)
	if len(in) != 0 || room < len(src) {
		t.Fatalf("Input for %d bytes: len %d cap %d", len(src), len(in), room)
	}
	enc, err := b.Encode(append(in, src...), level)
	if err != nil {
		t.Fatalf("encode %d bytes: %v", len(src), err)
	}
	if !bytes.Equal(enc, wantXOR(src, level)) {
		t.Fatalf("encode %d bytes at level %d: wrong bytes", len(src), level)
	}
	d := l.Lease(len(enc))
	defer d.Release()
	dec, err := d.Decode(append(d.Input(), enc...), len(src))
	if err != nil || !bytes.Equal(dec, src) {
		t.Fatalf("decode %d bytes: %v (equal %v)", len(src), err, bytes.Equal(dec, src))
	}
	return room
}

func TestBuffers(t *testing.T) {
	bin := buildFixture(t, "testcodec")
	r := rand.New(rand.NewPCG(1, 2))

	t.Run("leased", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		for _, n := range []int{0, 1, 4096, 65536 + 7, 1 << 20, slotIn} {
			// A leased Buffer is a whole slot, whatever size was asked.
			if room := roundTrip(t, l, randBlock(r, n), 1+n%6); room != slotIn {
				t.Fatalf("%d bytes: Input capacity %d, want a %d-byte slot", n, room, slotIn)
			}
		}
	})

	t.Run("no free lease", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		// Launch makes 16 slots and leases at most half of them.
		var held []codec.Buffer
		for range 8 {
			b := l.Lease(4096)
			if cap(b.Input()) != slotIn {
				t.Fatal("an idle plugin did not lease a slot")
			}
			held = append(held, b)
		}
		src := randBlock(r, 100<<10)
		if room := roundTrip(t, l, src, 3); room == slotIn {
			t.Fatal("a ninth lease got a slot: the budget does not hold")
		}
		for _, b := range held {
			b.Release()
		}
		if room := roundTrip(t, l, src, 3); room != slotIn {
			t.Fatal("no slot after the leases were released")
		}
	})

	t.Run("larger than a slot", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		src := randBlock(r, slotIn+12345)
		if room := roundTrip(t, l, src, 2); room != len(src) {
			t.Fatalf("Input capacity %d for a %d-byte block: want private memory of that size", room, len(src))
		}
	})

	t.Run("output larger than a slot", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		src := randBlock(r, slotIn)
		b := l.Lease(len(src))
		defer b.Release()
		enc, err := b.Encode(append(b.Input(), src...), 7)
		if err != nil {
			t.Fatalf("encode whose output outgrows the slot: %v", err)
		}
		if want := 1 + len(src) + len(src)/8 + 511; len(enc) != want || !bytes.Equal(enc[:1+len(src)], wantXOR(src, 7)) {
			t.Fatalf("got %d bytes, want %d with the XOR body", len(enc), want)
		}
	})

	t.Run("input built elsewhere", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		b := l.Lease(4096)
		defer b.Release()
		src := randBlock(r, 8192)
		// Not the Buffer's memory: copied in.
		if enc, err := b.Encode(src, 4); err != nil || !bytes.Equal(enc, wantXOR(src, 4)) {
			t.Fatalf("encode of other memory: %v", err)
		}
		// Input grown past its capacity is reallocated by append.
		big := randBlock(r, slotIn+1)
		if enc, err := b.Encode(append(b.Input(), big...), 5); err != nil || !bytes.Equal(enc, wantXOR(big, 5)) {
			t.Fatalf("encode of an outgrown Input: %v", err)
		}
		// The Buffer still works in place afterwards.
		small := randBlock(r, 100)
		if enc, err := b.Encode(append(b.Input(), small...), 6); err != nil || !bytes.Equal(enc, wantXOR(small, 6)) {
			t.Fatalf("encode after the fallbacks: %v", err)
		}
	})

	t.Run("grpc fallback", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, true)
		for _, n := range []int{0, 4096, 1 << 20} {
			if room := roundTrip(t, l, randBlock(r, n), 2); room != n {
				t.Fatalf("%d bytes over gRPC: Input capacity %d, want private memory of that size", n, room)
			}
		}
	})

	t.Run("codec errors", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		b := l.Lease(16)
		defer b.Release()
		if _, err := b.Encode(append(b.Input(), "x"...), 99); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("bad level: %v", err)
		}
		if _, err := b.Decode(append(b.Input(), 0xEE), 10); !errors.Is(err, sdk.ErrCorruptInput) {
			t.Fatalf("corrupt block: %v", err)
		}
		if _, err := b.Decode(append(b.Input(), wantXOR([]byte("0123456789"), 1)...), 5); !errors.Is(err, sdk.ErrTooLarge) {
			t.Fatalf("block over maxSize: %v", err)
		}
		if _, err := b.Decode(nil, -1); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("negative maxSize: %v", err)
		}
		// Errors leave the Buffer usable.
		if enc, err := b.Encode(append(b.Input(), "ok"...), 1); err != nil || !bytes.Equal(enc, wantXOR([]byte("ok"), 1)) {
			t.Fatalf("after errors: %v", err)
		}
	})

	t.Run("use after release", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		for _, size := range []int{16, slotIn + 1} { // leased, private
			b := l.Lease(size)
			b.Release()
			if b.Input() != nil {
				t.Fatalf("size %d: Input after Release", size)
			}
			if _, err := b.Encode([]byte("x"), 1); !errors.Is(err, sdk.ErrInvalidArgument) {
				t.Fatalf("size %d: Encode after Release: %v", size, err)
			}
			if _, err := b.Decode([]byte("x"), 1); !errors.Is(err, sdk.ErrInvalidArgument) {
				t.Fatalf("size %d: Decode after Release: %v", size, err)
			}
			b.Release()
		}
		// A released handle cannot touch the slot's next holder.
		b := l.Lease(16)
		b.Release()
		next := l.Lease(16)
		defer next.Release()
		copy(next.Input()[:4], "mine")
		if _, err := b.Encode([]byte("zzzz"), 1); err == nil {
			t.Fatal("a released Buffer encoded")
		}
		if enc, err := next.Encode(append(next.Input(), "mine"...), 1); err != nil || !bytes.Equal(enc, wantXOR([]byte("mine"), 1)) {
			t.Fatalf("the holder after a stale use: %v", err)
		}
	})

	t.Run("plugin crash", func(t *testing.T) {
		inst, l := launchTestCodec(t, bin, false)
		b := l.Lease(4096)
		in := append(b.Input(), "dying"...)
		_, err := b.Encode(in, 8)
		var ce *plugin.CrashError
		if !errors.Is(err, sdk.ErrPluginCrashed) || !errors.As(err, &ce) {
			t.Fatalf("encode that kills the plugin: %v", err)
		}
		copy(in, "still writable")
		if _, err := b.Encode(in, 1); !errors.Is(err, sdk.ErrPluginCrashed) {
			t.Fatalf("encode after the crash: %v", err)
		}
		if err := inst.Close(); err != nil {
			t.Fatalf("close with a Buffer out: %v", err)
		}
		copy(in, "after close")
		b.Release()
		if nb := l.Lease(10); cap(nb.Input()) == slotIn {
			t.Fatal("a slot was leased from a dead plugin")
		} else {
			nb.Release()
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 3))
				for i := range 40 {
					src := randBlock(r, r.IntN(256<<10))
					level := 1 + r.IntN(6)
					var enc []byte
					var err error
					b := l.Lease(len(src))
					if i%3 == 0 {
						enc, err = l.Encode(nil, src, level)
					} else {
						enc, err = b.Encode(append(b.Input(), src...), level)
					}
					if err == nil && !bytes.Equal(enc, wantXOR(src, level)) {
						err = errors.New("another caller's bytes")
					}
					b.Release()
					if err != nil {
						t.Errorf("goroutine %d call %d: %v", g, i, err)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}
