package plugins_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/dwcp/dwcp/plugins/internal/codectest"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// TestPluginBatches round-trips blocks through the real codec plugin
// binaries with codec.Batcher, on the shared-memory path and on the gRPC
// fallback: a batch of encodes of real memory of several sizes, then a
// batch decoding them with a corrupt block and a block over its limit
// among them. Those two fail on their own; every other block comes back
// byte for byte.
func TestPluginBatches(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the codec plugins and drives each through both data paths")
	}
	names := []string{"zstd", "s2", "lz4"}
	bins := buildPlugins(t, t.TempDir(), names...)
	sizes := []int{0, 1, 4 << 10, 64<<10 + 3, 64 << 10, 300 << 10, 4 << 10}
	for _, name := range names {
		for _, disable := range []bool{false, true} {
			path := map[bool]string{false: "shm", true: "grpc"}[disable]
			t.Run(name+"/"+path, func(t *testing.T) {
				inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: bins[name], DisableSharedMemory: disable})
				if err != nil {
					t.Fatal(err)
				}
				defer inst.Close()
				c, err := inst.Codec()
				if err != nil {
					t.Fatal(err)
				}
				bt, ok := c.(codec.Batcher)
				if !ok {
					t.Fatal("no codec.Batcher")
				}
				level := c.Capabilities().Levels.Default
				srcs := make([][]byte, len(sizes))
				total := 0
				for i, n := range sizes {
					srcs[i] = codectest.RealMemory(n)
					total += n
				}

				enc := bt.LeaseBatch(total)
				defer enc.Release()
				for _, src := range srcs {
					if err := enc.AddEncode(append(enc.Input(), src...), level); err != nil {
						t.Fatal(err)
					}
				}
				if err := enc.Run(); err != nil {
					t.Fatal(err)
				}
				encoded := make([][]byte, len(srcs))
				for i := range srcs {
					out, err := enc.Result(i)
					if err != nil {
						t.Fatalf("encode block %d: %v", i, err)
					}
					encoded[i] = bytes.Clone(out)
					// The same codec outside the batch decodes it.
					if back, err := c.Decode(nil, out, len(srcs[i])); err != nil || !bytes.Equal(back, srcs[i]) {
						t.Fatalf("block %d encoded in a batch does not decode alone: %v", i, err)
					}
				}

				dec := bt.LeaseBatch(total)
				defer dec.Release()
				corrupt, short := 2, 3
				for i, e := range encoded {
					in, limit := e, len(srcs[i])
					switch i {
					case corrupt:
						in = bytes.Clone(e)
						for k := range in {
							in[k] ^= 0xA5
						}
					case short:
						limit--
					}
					if err := dec.AddDecode(append(dec.Input(), in...), limit); err != nil {
						t.Fatal(err)
					}
				}
				if err := dec.Run(); err != nil {
					t.Fatal(err)
				}
				for i := range encoded {
					out, err := dec.Result(i)
					switch i {
					case corrupt:
						if !errors.Is(err, sdk.ErrCorruptInput) {
							t.Fatalf("corrupt block: %v, want ErrCorruptInput", err)
						}
					case short:
						if !errors.Is(err, sdk.ErrTooLarge) && !errors.Is(err, sdk.ErrCorruptInput) {
							t.Fatalf("block over its limit: %v, want ErrTooLarge", err)
						}
					default:
						if err != nil || !bytes.Equal(out, srcs[i]) {
							t.Fatalf("decode block %d: %v (equal %v)", i, err, bytes.Equal(out, srcs[i]))
						}
					}
				}
			})
		}
	}
}
