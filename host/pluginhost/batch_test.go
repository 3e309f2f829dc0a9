package pluginhost

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
)

// TestRestartingCodecLeasesAndBatches: the codec the host hands out keeps
// the plugin's zero-copy Buffers and Batches, on both data planes, across
// a crash and restart.
func TestRestartingCodecLeasesAndBatches(t *testing.T) {
	current, _ := buildTestPlugins(t)
	for _, shm := range []bool{true, false} {
		t.Run(fmt.Sprintf("shm=%v", shm), func(t *testing.T) {
			h := openHost(t, pluginDir(t, map[string]string{"testcodec": current}), Options{DisableSharedMemory: !shm})
			p, _ := h.Get("testcodec")
			c, err := p.Codec()
			if err != nil {
				t.Fatal(err)
			}
			bt, ok := c.(codec.Batcher)
			if !ok {
				t.Fatal("the host's codec offers no codec.Batcher")
			}
			checkBatch(t, bt)

			buf := bt.Lease(16)
			if out, err := buf.Encode(append(buf.Input(), "leased"...), 0); err != nil || string(out) != "leased" {
				t.Fatalf("leased encode: %q, %v", out, err)
			}
			buf.Release()

			// A crash mid-batch: the batch reports it, the next one runs
			// on the restarted process.
			b := bt.LeaseBatch(64)
			if err := b.AddEncode(append(b.Input(), "exit"...), 0); err != nil {
				t.Fatal(err)
			}
			err = b.Run()
			if shm && !errors.Is(err, sdk.ErrPluginCrashed) {
				t.Fatalf("batch that crashes the plugin: %v", err)
			}
			if _, berr := b.Result(0); !errors.Is(berr, sdk.ErrPluginCrashed) {
				t.Fatalf("block that crashes the plugin: %v", berr)
			}
			b.Release()
			checkBatch(t, bt)

		})
	}
}

// checkBatch runs one batch of good blocks with a corrupt one among them.
func checkBatch(t *testing.T, bt codec.Batcher) {
	t.Helper()
	b := bt.LeaseBatch(1 << 16)
	defer b.Release()
	srcs := [][]byte{[]byte("alpha"), []byte("corrupt block"), bytes.Repeat([]byte("g"), 40000), []byte("omega")}
	for _, s := range srcs {
		if err := b.AddEncode(append(b.Input(), s...), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.AddDecode(append(b.Input(), "decode me"...), 9); err != nil {
		t.Fatal(err)
	}
	if err := b.Run(); err != nil {
		t.Fatal(err)
	}
	for i, s := range srcs {
		out, err := b.Result(i)
		if i == 1 {
			if !errors.Is(err, sdk.ErrCorruptInput) {
				t.Fatalf("corrupt block: %v", err)
			}
			continue
		}
		if err != nil || !bytes.Equal(out, s) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	if out, err := b.Result(4); err != nil || string(out) != "decode me" {
		t.Fatalf("decode block: %q, %v", out, err)
	}
}

// identity is an in-process codec for the private fallbacks: it copies,
// and refuses input that starts with "corrupt".
type identity struct{}

func (identity) Capabilities() codec.Capabilities { return codec.Capabilities{Algorithm: "identity"} }

func (identity) Encode(dst, src []byte, level int) ([]byte, error) {
	if bytes.HasPrefix(src, []byte("corrupt")) {
		return dst, fmt.Errorf("identity: %w", sdk.ErrCorruptInput)
	}
	return append(dst, src...), nil
}

func (identity) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if len(src) > maxSize {
		return dst, fmt.Errorf("identity: %w", sdk.ErrTooLarge)
	}
	return append(dst, src...), nil
}

func (identity) Lease(size int) codec.Buffer {
	return &plainBuffer{c: identity{}, in: make([]byte, 0, size)}
}

func (identity) LeaseBatch(size int) codec.Batch {
	return &plainBatch{c: identity{}, in: make([]byte, 0, size)}
}

// TestPlainFallbacks: the private Buffer and Batch that Lease and
// LeaseBatch return when no plugin process is reachable behave as the
// codec.Leaser and codec.Batcher contracts say.
func TestPlainFallbacks(t *testing.T) {
	checkBatch(t, identity{})
	b := identity{}.LeaseBatch(8)
	if err := b.AddEncode([]byte("elsewhere, longer than Input"), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.AddDecode([]byte("too long"), 3); err != nil {
		t.Fatal(err)
	}
	if err := b.AddDecode(nil, -1); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("negative maxSize: %v", err)
	}
	if _, err := b.Result(0); !errors.Is(err, sdk.ErrInvalidArgument) {
		t.Fatalf("Result before Run: %v", err)
	}
	if err := b.Run(); err != nil {
		t.Fatal(err)
	}
	if out, err := b.Result(0); err != nil || string(out) != "elsewhere, longer than Input" {
		t.Fatalf("block 0: %q, %v", out, err)
	}
	if _, err := b.Result(1); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("block 1: %v", err)
	}
	if b.AddEncode([]byte("x"), 0) == nil || b.Run() == nil || b.Input() != nil {
		t.Fatal("a run Batch accepted more work before Reset")
	}
	b.Reset()
	if err := b.AddEncode(append(b.Input(), "again"...), 0); err != nil || b.Len() != 1 {
		t.Fatalf("after Reset: %v, Len %d", err, b.Len())
	}
	b.Release()
	if b.Input() != nil || b.AddEncode([]byte("x"), 0) == nil || b.Run() == nil {
		t.Fatal("a released Batch still works")
	}

	buf := identity{}.Lease(4)
	if out, err := buf.Encode(append(buf.Input(), "grown past four"...), 0); err != nil || string(out) != "grown past four" {
		t.Fatalf("buffer: %q, %v", out, err)
	}
	if _, err := buf.Decode([]byte("abc"), 2); !errors.Is(err, sdk.ErrTooLarge) {
		t.Fatalf("buffer decode: %v", err)
	}
	buf.Release()
	if _, err := buf.Encode([]byte("x"), 0); !errors.Is(err, sdk.ErrInvalidArgument) || buf.Input() != nil {
		t.Fatalf("released buffer: %v", err)
	}
}
