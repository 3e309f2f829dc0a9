package qataccel

import (
	"bytes"
	"compress/flate"
	"errors"
	"io"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
)

// FuzzInflate feeds arbitrary blocks to the emulated decompressor: no
// panic, never past the limit, and agreement with the standard library
// where both accept the block.
func FuzzInflate(f *testing.F) {
	a := New(Config{Emulate: true})
	for _, in := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("page "), 300)} {
		enc, err := a.Run(nil, accel.OpCompress, 6, in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc, uint32(len(in)))
		f.Add(enc[:len(enc)/2], uint32(1<<16))
		f.Add(append(enc, 0), uint32(1<<16))
	}
	f.Add([]byte{0x07, 0x00}, uint32(100))
	f.Add([]byte{0x01, 0x00, 0x00, 0xff, 0xff}, uint32(0)) // final empty stored block
	f.Fuzz(func(t *testing.T, block []byte, limit uint32) {
		limit %= 1 << 22
		out, err := a.Run([]byte("p"), accel.OpDecompress, int64(limit), block)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) && !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if string(out) != "p" {
				t.Fatal("dst changed on error")
			}
			return
		}
		if len(out)-1 > int(limit) {
			t.Fatalf("%d bytes over limit %d", len(out)-1, limit)
		}
		ref, rerr := io.ReadAll(io.LimitReader(flate.NewReader(bytes.NewReader(block)), int64(limit)+1))
		if rerr != nil || !bytes.Equal(ref, out[1:]) {
			t.Fatalf("disagrees with compress/flate (err %v)", rerr)
		}
	})
}

// FuzzDeflateRoundTrip compresses arbitrary input at any level.
func FuzzDeflateRoundTrip(f *testing.F) {
	a := New(Config{Emulate: true})
	f.Add([]byte("abcabcabc"), int8(1))
	f.Add([]byte{}, int8(9))
	f.Add(make([]byte, 5000), int8(0))
	f.Fuzz(func(t *testing.T, in []byte, level int8) {
		enc, err := a.Run(nil, accel.OpCompress, int64(level), in)
		if level < MinLevel || level > MaxLevel {
			if !errors.Is(err, sdk.ErrInvalidArgument) {
				t.Fatalf("level %d: %v", level, err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		dec, err := a.Run(nil, accel.OpDecompress, int64(len(in)), enc)
		if err != nil || !bytes.Equal(dec, in) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
