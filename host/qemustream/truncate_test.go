package qemustream

import (
	"bytes"
	"errors"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

// smallStream has every element kind in a few KiB: 1 KiB pages, a
// configuration with subsections, commands, a PACKAGED blob, every RAM
// record kind, device sections with text payloads, EOF and VMDESCRIPTION.
// It returns the stream and the offset just after its EOF byte, the one
// place besides the true end where a stream may legitimately stop.
func smallStream() ([]byte, int64) {
	o := streamtest.Options{PageSize: 1024, PageBitsSubsection: true,
		Capabilities: []string{"x-ignore-shared"}, IgnoreShared: true, UUID: &uuid}
	b := streamtest.New(o)
	b.Header()
	b.OpenReturnPath()
	b.Ping(1)
	blocks := []streamtest.Block{{Name: "pc.ram", Length: 16 << 10, GPA: 0}, {Name: "vga", Length: 4 << 10, GPA: 0xfd000000}}
	ram := b.SectionStart("ram", 0, 4)
	b.MemSize(blocks)
	b.MultifdFlush()
	b.EOS()
	b.Footer(ram)

	page := func(c byte) []byte { return bytes.Repeat([]byte{c}, 1024) }
	b.SectionPart(ram)
	b.Zero("pc.ram", 0, 0)
	b.Page("pc.ram", 1024, page('a'))
	b.Page("pc.ram", 2048, page('b'))
	b.Page("vga", 0, page('c'))
	b.XBZRLE("vga", 0, streamtest.EncodeXBZRLE(page('c'), append(page('c')[:1000], "changed tail of the page"...), 1024))
	b.Compressed("pc.ram", 3072, streamtest.Compress(page('d')))
	b.EOS()
	b.Footer(ram)
	b.RAMDiscard("pc.ram", [][2]uint64{{0, 1024}})
	nested := streamtest.New(o)
	nested.Device("nested", 0, 1, []byte("packaged device state"))
	b.Packaged(nested.Bytes())
	b.SectionEnd(ram)
	b.Page("pc.ram", 4096, page('e'))
	b.EOS()
	b.Footer(ram)
	// Text payloads hold no 0x00 and no '~' (0x7e), so no prefix of the
	// device sections can end like a stream by accident.
	b.Device("timer", 0, 2, []byte("timer registers"))
	b.Device("serial", 0, 3, []byte("serial port state, enough bytes to matter"))
	b.EOF()
	afterEOF := b.Len()
	b.VMDescription([]byte(`{"page_size": 1024, "devices": [{"name": "timer"}, {"name": "serial"}]}`))
	return b.Bytes(), afterEOF
}

// Every prefix of a stream is an error, except the whole stream and the
// stream cut right after EOF (a VMDESCRIPTION is optional): never a
// panic, never a silent success.
func TestTruncationAtEveryOffset(t *testing.T) {
	data, afterEOF := smallStream()
	if res := readAll(t, bytes.NewReader(data), Options{}); res.err != nil || !bytes.Equal(res.out, data) {
		t.Fatalf("whole stream: %v", res.err)
	}
	for cut := 0; cut <= len(data); cut++ {
		res := readAll(t, bytes.NewReader(data[:cut]), Options{})
		valid := cut == len(data) || int64(cut) == afterEOF
		switch {
		case valid && res.err != nil:
			t.Fatalf("cut at %d of %d: %v", cut, len(data), res.err)
		case !valid && res.err == nil:
			t.Fatalf("cut at %d of %d read without error", cut, len(data))
		case !valid && !errors.Is(res.err, ErrTruncated):
			t.Fatalf("cut at %d: error %v is not ErrTruncated", cut, res.err)
		}
		if !bytes.Equal(res.out, data[:len(res.out)]) {
			t.Fatalf("cut at %d: items are not a prefix of the stream", cut)
		}
	}
}

// The same on a larger 4 KiB-page stream, sampling cuts in the part the
// reader parses (device state that follows goes through opaque, and its
// random bytes can end like a stream by chance).
func TestTruncationInParsedRegion(t *testing.T) {
	b := streamtest.Generate(with(base(40), func(c *streamtest.Config) { c.XBZRLE = true; c.DirtyPasses = 3 }))
	data := b.Bytes()
	res := readAll(t, bytes.NewReader(data), Options{})
	if res.err != nil {
		t.Fatal(res.err)
	}
	limit := int(res.stats.OpaqueRestFrom)
	cuts := map[int]bool{}
	for c := 0; c < limit; c += 8191 {
		cuts[c] = true
	}
	for i, rec := range b.Records {
		if i%40 != 0 && (rec.Kind != streamtest.XBZRLE || i%8 != 0) {
			continue
		}
		for d := -1; d <= 9; d++ {
			if c := int(rec.Offset) + d; c >= 0 && c < limit {
				cuts[c] = true
			}
		}
	}
	for cut := range cuts {
		res := readAll(t, bytes.NewReader(data[:cut]), Options{})
		if !errors.Is(res.err, ErrTruncated) {
			t.Fatalf("cut at %d: got %v, want ErrTruncated", cut, res.err)
		}
	}
}
