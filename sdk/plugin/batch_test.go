package plugin_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// batchDataOffset is where a leased Batch's blocks start in its slot
// (after the shared-memory batch table).
const batchDataOffset = 4096

func asBatcher(t *testing.T, l codec.Leaser) codec.Batcher {
	t.Helper()
	b, ok := l.(codec.Batcher)
	if !ok {
		t.Fatal("a plugin codec does not offer codec.Batcher")
	}
	return b
}

// block is one block a test queues, with what its Result must be.
type block struct {
	decode  bool
	src     []byte
	level   int // encode
	maxSize int // decode
	want    []byte
	wantErr error
}

// runBatch queues the blocks (appending each to Input, as a caller
// building in place does, or passing them as they are when elsewhere is
// set), runs the Batch and checks every Result.
func runBatch(t *testing.T, b codec.Batch, blocks []block, elsewhere bool) {
	t.Helper()
	for i, bl := range blocks {
		src := bl.src
		if !elsewhere {
			src = append(b.Input(), bl.src...)
		}
		var err error
		if bl.decode {
			err = b.AddDecode(src, bl.maxSize)
		} else {
			err = b.AddEncode(src, bl.level)
		}
		if err != nil {
			t.Fatalf("add block %d: %v", i, err)
		}
	}
	if b.Len() != len(blocks) {
		t.Fatalf("Len %d, want %d", b.Len(), len(blocks))
	}
	if err := b.Run(); err != nil {
		t.Fatalf("run: %v", err)
	}
	for i, bl := range blocks {
		out, err := b.Result(i)
		switch {
		case bl.wantErr != nil:
			if !errors.Is(err, bl.wantErr) || out != nil {
				t.Fatalf("block %d: %d bytes, %v; want %v", i, len(out), err, bl.wantErr)
			}
		case err != nil || !bytes.Equal(out, bl.want):
			t.Fatalf("block %d (%d bytes, decode %v): %v, equal %v", i, len(bl.src), bl.decode, err, bytes.Equal(out, bl.want))
		}
	}
}

// mixedBlocks makes n blocks of random sizes below maxSize: encodes and
// decodes, with a corrupt block and one over its maxSize among them.
func mixedBlocks(r *rand.Rand, n, maxSize int) []block {
	blocks := make([]block, n)
	for i := range blocks {
		src := randBlock(r, r.IntN(maxSize))
		level := 1 + r.IntN(6)
		switch i % 6 {
		case 0, 1, 2:
			blocks[i] = block{src: src, level: level, want: wantXOR(src, level)}
		case 3:
			blocks[i] = block{decode: true, src: wantXOR(src, level), maxSize: len(src), want: src}
		case 4:
			blocks[i] = block{decode: true, src: []byte{0xEE, 1, 2}, maxSize: 10, wantErr: sdk.ErrCorruptInput}
		case 5:
			blocks[i] = block{decode: true, src: wantXOR(append(src, 1, 2), level), maxSize: len(src) + 1, wantErr: sdk.ErrTooLarge}
		}
	}
	return blocks
}

func TestBatches(t *testing.T) {
	bin := buildFixture(t, "testcodec")
	r := rand.New(rand.NewPCG(7, 8))

	t.Run("leased", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		bl := asBatcher(t, l)
		b := bl.LeaseBatch(1 << 20)
		defer b.Release()
		if room := cap(b.Input()); room != slotIn-batchDataOffset {
			t.Fatalf("Input capacity %d, want the slot after its table (%d)", room, slotIn-batchDataOffset)
		}
		for round := range 6 {
			runBatch(t, b, mixedBlocks(r, 1+r.IntN(codec.MaxBatch), 48<<10), round%2 == 1)
			b.Reset()
		}
		// A full batch of tiny blocks.
		blocks := make([]block, codec.MaxBatch)
		for i := range blocks {
			src := []byte(fmt.Sprintf("block %d", i))
			blocks[i] = block{src: src, level: 3, want: wantXOR(src, 3)}
		}
		runBatch(t, b, blocks, false)
	})

	t.Run("blocks over the slot", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		b := asBatcher(t, l).LeaseBatch(slotIn)
		defer b.Release()
		// Three 1.5 MiB encodes: the third's input does not fit the rest
		// of the slot, and the second's output room may not either; those
		// run alone. A block larger than a slot, and one whose output
		// outgrows its slot (level 7 pads), take the gRPC stream.
		var blocks []block
		for range 3 {
			src := randBlock(r, 3<<19)
			blocks = append(blocks, block{src: src, level: 2, want: wantXOR(src, 2)})
		}
		huge := randBlock(r, slotIn+1)
		blocks = append(blocks, block{src: huge, level: 4, want: wantXOR(huge, 4)})
		small := randBlock(r, 100)
		blocks = append(blocks, block{src: small, level: 5, want: wantXOR(small, 5)})
		runBatch(t, b, blocks, false)
		b.Reset()
		runBatch(t, b, blocks, true)
	})

	t.Run("grpc fallback", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, true)
		b := asBatcher(t, l).LeaseBatch(256 << 10)
		defer b.Release()
		if room := cap(b.Input()); room != 256<<10 {
			t.Fatalf("Input capacity %d over gRPC, want private memory of 256 KiB", room)
		}
		for round := range 3 {
			runBatch(t, b, mixedBlocks(r, 1+r.IntN(12), 64<<10), round == 1)
			b.Reset()
		}
	})

	t.Run("no free slot", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		var held []codec.Buffer
		for range 8 { // Launch leases at most 8 of its 16 slots
			held = append(held, l.Lease(16))
		}
		b := asBatcher(t, l).LeaseBatch(64 << 10)
		if room := cap(b.Input()); room != 64<<10 {
			t.Fatalf("Input capacity %d with every lease out, want private memory", room)
		}
		runBatch(t, b, mixedBlocks(r, 10, 32<<10), false)
		b.Release()
		for _, h := range held {
			h.Release()
		}
	})

	t.Run("misuse", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		b := asBatcher(t, l).LeaseBatch(4096)
		if _, err := b.Result(0); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("Result before Run: %v", err)
		}
		if err := b.AddDecode([]byte{1}, -1); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("negative maxSize: %v", err)
		}
		for i := range codec.MaxBatch {
			if err := b.AddEncode(append(b.Input(), byte(i)), 1); err != nil {
				t.Fatalf("block %d: %v", i, err)
			}
		}
		if err := b.AddEncode([]byte("one too many"), 1); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("block %d: %v", codec.MaxBatch+1, err)
		}
		if err := b.Run(); err != nil {
			t.Fatal(err)
		}
		if err := b.AddEncode([]byte("late"), 1); !errors.Is(err, sdk.ErrInvalidArgument) || b.Input() != nil {
			t.Fatalf("add after Run: %v", err)
		}
		if err := b.Run(); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("second Run: %v", err)
		}
		if _, err := b.Result(codec.MaxBatch); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("Result out of range: %v", err)
		}
		if out, err := b.Result(9); err != nil || !bytes.Equal(out, wantXOR([]byte{9}, 1)) {
			t.Fatalf("block 9: %v", err)
		}
		b.Release()
		b.Release()
		if b.Input() != nil || b.AddEncode([]byte("x"), 1) == nil || b.Run() == nil {
			t.Fatal("a released Batch still works")
		}
		if _, err := b.Result(0); !errors.Is(err, sdk.ErrInvalidArgument) {
			t.Fatalf("Result after Release: %v", err)
		}
	})

	t.Run("plugin crash", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		b := asBatcher(t, l).LeaseBatch(4096)
		defer b.Release()
		for i, level := range []int{1, 8, 1} { // level 8: the plugin exits
			if err := b.AddEncode(append(b.Input(), byte(i)), level); err != nil {
				t.Fatal(err)
			}
		}
		err := b.Run()
		var ce *plugin.CrashError
		if !errors.Is(err, sdk.ErrPluginCrashed) || !errors.As(err, &ce) {
			t.Fatalf("batch that kills the plugin: %v", err)
		}
		for i := range 3 {
			if _, err := b.Result(i); !errors.Is(err, sdk.ErrPluginCrashed) {
				t.Fatalf("block %d: %v", i, err)
			}
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		_, l := launchTestCodec(t, bin, false)
		bl := asBatcher(t, l)
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(g), 5))
				for range 15 {
					b := bl.LeaseBatch(1 << 20)
					blocks := mixedBlocks(r, 1+r.IntN(16), 32<<10)
					for i, x := range blocks {
						var err error
						if x.decode {
							err = b.AddDecode(append(b.Input(), x.src...), x.maxSize)
						} else {
							err = b.AddEncode(append(b.Input(), x.src...), x.level)
						}
						if err != nil {
							t.Errorf("goroutine %d block %d: %v", g, i, err)
						}
					}
					err := b.Run()
					for i, x := range blocks {
						out, berr := b.Result(i)
						if err == nil && x.wantErr == nil && (berr != nil || !bytes.Equal(out, x.want)) {
							err = fmt.Errorf("block %d: %v", i, berr)
						}
						if err == nil && x.wantErr != nil && !errors.Is(berr, x.wantErr) {
							err = fmt.Errorf("block %d: %v, want %v", i, berr, x.wantErr)
						}
					}
					b.Release()
					if err != nil {
						t.Errorf("goroutine %d: %v", g, err)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}
