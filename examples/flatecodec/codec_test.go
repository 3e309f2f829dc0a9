package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// TestConformance runs the whole SDK conformance kit against the codec
// in-process: the quickest loop while writing a codec.
func TestConformance(t *testing.T) {
	conformance.TestCodec(t, NewCodec())
}

// TestPluginBinary builds this plugin and runs the same kit through the
// plugin boundary, as the DWCP host will run it: over shared memory, then
// over the gRPC fallback.
func TestPluginBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the plugin binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("need the go tool to build the plugin: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "flatecodec")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	conformance.TestCodecBinary(t, bin, conformance.CodecOptions{HugeSize: 8 << 20, MaxLevels: 4})
}

// Trailing bytes after the DEFLATE stream are damage, not ignored.
func TestTrailingGarbage(t *testing.T) {
	c := NewCodec()
	enc, err := c.Encode(nil, []byte("hello hello hello"), 6)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Decode(nil, append(enc, 0), 100); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("got %v, want ErrCorruptInput", err)
	}
}

func TestNoAllocsWhenWarm(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops pooled items at random under -race; allocation counts are checked without it")
	}
	c := NewCodec()
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	src := p.Bytes(64<<10, 1)
	enc, _ := c.Encode(nil, src, 6)
	dst := make([]byte, 0, c.Capabilities().Bound.Max(len(src)))
	out := make([]byte, 0, len(src))
	// sync.Pool may drop a pooled writer at a GC; allow a little.
	if a := testing.AllocsPerRun(50, func() { dst, _ = c.Encode(dst[:0], src, 6) }); a > 1 {
		t.Errorf("Encode allocates %v times per call", a)
	}
	// compress/flate's reader rebuilds its Huffman link tables on every
	// Reset: a fixed handful of small allocations per block, never ones
	// that grow with the data.
	if a := testing.AllocsPerRun(50, func() { out, _ = c.Decode(out[:0], enc, len(src)) }); a > 16 {
		t.Errorf("Decode allocates %v times per call", a)
	}
	if !bytes.Equal(out, src) {
		t.Fatal("round trip")
	}
}

// FuzzDecode: whatever the input, Decode never panics, classifies its
// errors and honours maxSize.
func FuzzDecode(f *testing.F) {
	c := NewCodec()
	for _, p := range conformance.Patterns() {
		for _, level := range []int{1, 6, 9} {
			enc, err := c.Encode(nil, p.Bytes(5000, 1), level)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(enc)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxSize = 1 << 20
		out, err := c.Decode(nil, data, maxSize)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) && !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("unclassified error %q", err)
			}
			return
		}
		if len(out) > maxSize {
			t.Fatalf("%d bytes over maxSize", len(out))
		}
		enc, err := c.Encode(nil, out, 6)
		if err != nil {
			t.Fatal(err)
		}
		back, err := c.Decode(nil, enc, len(out))
		if err != nil || !bytes.Equal(back, out) {
			t.Fatalf("accepted output does not round-trip: %v", err)
		}
	})
}
