package simdaccel

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/klauspost/compress/s2"
)

// FuzzDecompress feeds arbitrary blocks to the s2 decoder: it must never
// panic, never exceed the limit, and agree with the library's own decoder.
func FuzzDecompress(f *testing.F) {
	text := bytes.Repeat([]byte("page page page zero zero "), 40)
	f.Add(s2.Encode(nil, text), uint32(len(text)))
	f.Add(s2.EncodeBest(nil, make([]byte, 4096)), uint32(4096))
	f.Add(s2.Encode(nil, nil), uint32(0))
	f.Add([]byte{0x80, 0x20, 0x0e, 0xff, 0xff}, uint32(4096))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, uint32(1<<20))
	f.Add([]byte{}, uint32(10))
	a := build(detect(), options{compression: true})
	f.Fuzz(func(t *testing.T, block []byte, limit uint32) {
		limit %= 1 << 22
		out, err := a.Run([]byte("p"), accel.OpDecompress, int64(limit), block)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) && !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if string(out) != "p" {
				t.Fatalf("dst changed on error")
			}
			return
		}
		if out[0] != 'p' || len(out)-1 > int(limit) {
			t.Fatalf("output of %d bytes over limit %d", len(out)-1, limit)
		}
		ref, rerr := s2.Decode(nil, block)
		if rerr != nil || !bytes.Equal(ref, out[1:]) {
			t.Fatalf("disagrees with s2.Decode (err %v)", rerr)
		}
	})
}

// FuzzRun sends any op, argument and input: no panic, errors only of the
// documented kinds, and page results equal to the obvious loops.
func FuzzRun(f *testing.F) {
	f.Add(uint8(accel.OpZeroScan), int64(4), []byte{0, 0, 0, 0, 0, 1, 0, 0})
	f.Add(uint8(accel.OpHashXXH3), int64(3), []byte("abcabc"))
	f.Add(uint8(accel.OpXOR), int64(0), []byte{1, 2, 3, 4})
	f.Add(uint8(accel.OpCompress), int64(2), []byte("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"))
	f.Add(uint8(accel.OpDecompress), int64(100), []byte{3, 8, 'a', 'b', 'c'})
	f.Add(uint8(0), int64(-1), []byte{})
	vs := []*Accel{
		build(detect(), options{compression: true}),
		build(detect(), options{generic: true, compression: true}),
	}
	f.Fuzz(func(t *testing.T, op uint8, arg int64, in []byte) {
		for _, a := range vs {
			out, err := a.Run(nil, accel.Op(op), arg, in)
			if err != nil {
				if !errors.Is(err, sdk.ErrInvalidArgument) && !errors.Is(err, sdk.ErrCorruptInput) &&
					!errors.Is(err, sdk.ErrTooLarge) && !errors.Is(err, sdk.ErrUnsupported) {
					t.Fatalf("%s: unexpected error class: %v", accel.Op(op), err)
				}
				continue
			}
			switch accel.Op(op) {
			case accel.OpZeroScan:
				if want := refZero(in, int(arg)); !bytes.Equal(out, want) {
					t.Fatalf("zero scan %x, want %x", out, want)
				}
			case accel.OpHashXXH3:
				if len(out) != 16*(len(in)/int(arg)) {
					t.Fatalf("hash output %d bytes for %d pages", len(out), len(in)/int(arg))
				}
			case accel.OpXOR:
				h := len(in) / 2
				for i := range h {
					if out[i] != in[i]^in[h+i] {
						t.Fatalf("xor wrong at %d", i)
					}
				}
			case accel.OpCompress:
				back, err := a.Run(nil, accel.OpDecompress, int64(len(in)), out)
				if err != nil || !bytes.Equal(back, in) {
					t.Fatalf("compress round trip: %v", err)
				}
			}
		}
	})
}
