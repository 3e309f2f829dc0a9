package qemustream

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

// FuzzReader feeds arbitrary bytes to the reader, strict and lenient. Whatever
// the input, it must not panic, every error must be an *Error, the items
// must be a byte-exact prefix of the input, and a read that ends in io.EOF
// must have reproduced all of it.
func FuzzReader(f *testing.F) {
	small, _ := smallStream()
	f.Add(small, true)
	// Small seeds keep the mutator fast; the large shapes are covered by
	// TestReconstructsEveryShape.
	for _, sh := range []string{"all-commands", "zero-fill", "early-setup-full", "mapped-ram"} {
		for _, s := range shapes() {
			if s.name == sh {
				f.Add(s.build().Bytes(), false)
			}
		}
	}
	tiny := streamtest.Generate(streamtest.Config{Seed: 9, Options: streamtest.Options{PageSize: 1024},
		Blocks: []streamtest.Block{{Name: "pc.ram", Length: 8 << 10}}, DirtyPasses: 1, DirtyPages: 3,
		FinalDirty: 2, Devices: 1, XBZRLE: true})
	f.Add(tiny.Bytes(), true)
	for _, c := range corruptions() {
		data, _ := c.build()
		if len(data) < 10000 {
			f.Add(data, false)
		}
	}
	f.Add([]byte{}, false)
	f.Add([]byte("QEVM\x00\x00\x00\x03\x00"), false)

	f.Fuzz(func(t *testing.T, data []byte, small bool) {
		for _, lenient := range []bool{false, true} {
			opts := Options{Lenient: lenient, MaxOpaque: 3000}
			if small {
				opts.PageSize = 1024
			}
			res := readAll(t, bytes.NewReader(data), opts)
			if !bytes.Equal(res.out, data[:len(res.out)]) {
				t.Fatalf("lenient=%v: items are not a prefix of the input", lenient)
			}
			if res.err == nil && len(res.out) != len(data) {
				t.Fatalf("lenient=%v: io.EOF after %d of %d bytes", lenient, len(res.out), len(data))
			}
			if res.err != nil && !errors.Is(res.err, ErrCorrupt) && !errors.Is(res.err, ErrTruncated) &&
				!errors.Is(res.err, ErrUnsupported) && !errors.Is(res.err, io.ErrUnexpectedEOF) {
				t.Fatalf("lenient=%v: unexpected error class: %v", lenient, res.err)
			}
			if lenient && res.err != nil && len(data) >= 8 && Detect(data[:8]) && !errors.Is(res.err, ErrTruncated) {
				t.Fatalf("lenient reader failed on a format error past the header: %v", res.err)
			}
		}
	})
}
