package qemustream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// inPart returns a builder positioned inside a SECTION_PART of "ram" with a
// single 64 KiB block "pc.ram", after one PAGE record.
func inPart(opts streamtest.Options) (*streamtest.Builder, uint32) {
	b := streamtest.New(opts)
	b.Header()
	id := b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 64 << 10}})
	b.SectionPart(id)
	b.Page("pc.ram", 0, make([]byte, b.PageSize()))
	return b, id
}

type corruption struct {
	name  string
	opts  Options
	build func() (data []byte, at int64)
	want  error
	text  string
}

func corruptions() []corruption {
	mark := func(b *streamtest.Builder, bad []byte, tail ...[]byte) ([]byte, int64) {
		at := b.Len()
		b.Raw(bad)
		for _, t := range tail {
			b.Raw(t)
		}
		return b.Bytes(), at
	}
	part := func(bad []byte, off int64) func() ([]byte, int64) {
		return func() ([]byte, int64) {
			b, _ := inPart(streamtest.Options{})
			data, at := mark(b, bad, make([]byte, 8192))
			return data, at + off
		}
	}
	hdr := func(version uint32) []byte { return append(be32(0x5145564d), be32(version)...) }
	return []corruption{
		{name: "bad magic", want: ErrCorrupt, text: "bad magic",
			build: func() ([]byte, int64) { return []byte("QEVX\x00\x00\x00\x03\x00"), 0 }},
		{name: "version 2", want: ErrUnsupported, text: "obsolete stream version 2",
			build: func() ([]byte, int64) { return append(hdr(2), 0), 4 }},
		{name: "version 7", want: ErrCorrupt, text: "unknown stream version 7",
			build: func() ([]byte, int64) { return append(hdr(7), 0), 4 }},
		{name: "machine name too long", want: ErrCorrupt, text: "machine type name length 1000 over limit",
			build: func() ([]byte, int64) { return append(append(hdr(3), 7), be32(1000)...), 9 }},
		{name: "unknown configuration subsection", want: ErrUnsupported, text: `unknown configuration subsection "configuration/colour"`,
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				return mark(b, append([]byte("\x05\x14configuration/colour"), be32(1)...), be32(0))
			}},
		{name: "capability count over limit", want: ErrCorrupt, text: "capability count 65 over limit",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, append([]byte("\x05\x1aconfiguration/capabilities"), be32(1)...), be32(65), make([]byte, 100))
				return data, at + 2 + 26 + 4
			}},
		{name: "unknown record type", want: ErrCorrupt, text: "unknown record type 0x09",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 4096}})
				return mark(b, []byte{9}, make([]byte, 20))
			}},
		{name: "subsection at top level", want: ErrCorrupt, text: "unknown record type 0x05",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 4096}})
				return mark(b, []byte{5, 1, 'x'}, make([]byte, 20))
			}},
		{name: "section never started", want: ErrCorrupt, text: "section id 99 that was never started",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 4096}})
				data, at := mark(b, append([]byte{2}, be32(99)...), make([]byte, 20))
				return data, at + 1
			}},
		{name: "empty idstr", want: ErrCorrupt, text: "empty idstr",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, append(append([]byte{1}, be32(0)...), 0), make([]byte, 20))
				return data, at + 5
			}},
		{name: "ram section version 3", want: ErrUnsupported, text: "ram section version 3",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.SectionStart("ram", 0, 3)
				return b.Bytes(), b.Len() - 4
			}},
		{name: "unknown ram flags", want: ErrCorrupt, text: "unknown RAM record flags 0x400", build: part(be64(0x1000|0x400), 0)},
		{name: "ram flag combination", want: ErrCorrupt, text: "unknown RAM record flags 0xa", build: part(be64(0x1000|0x0a), 0)},
		{name: "obsolete full flag", want: ErrCorrupt, text: "unknown RAM record flags 0x1", build: part(be64(0x1000|0x01), 0)},
		{name: "rdma hook", want: ErrUnsupported, text: "HOOK", build: part(be64(0x80), 0)},
		{name: "xbzrle encoding byte", want: ErrCorrupt, text: "XBZRLE encoding byte 0x02",
			build: part(append(be64(0x1000|0x40|0x20), 2, 0, 4), 8)},
		{name: "xbzrle too long", want: ErrCorrupt, text: "XBZRLE length 5000 over page size",
			build: part(append(be64(0x1000|0x40|0x20), 1, 5000>>8, 5000&0xff), 9)},
		{name: "compressed too long", want: ErrCorrupt, text: "COMPRESS_PAGE length 4111 over compressBound 4110",
			build: part(append(be64(0x1000|0x100|0x20), be32(4111)...), 8)},
		{name: "unknown block", want: ErrCorrupt, text: `record for RAM block "nope" not named by MEM_SIZE`,
			build: part(append(be64(0x1000|0x08), "\x04nope"...), 8)},
		{name: "empty block name", want: ErrCorrupt, text: "empty RAM block name",
			build: part(append(be64(0x1000|0x08), 0), 8)},
		{name: "page beyond block", want: ErrCorrupt, text: `page offset 0x10000 beyond RAM block "pc.ram" length 0x10000`,
			build: part(be64(0x10000|0x08|0x20), 0)},
		{name: "continue without block", want: ErrCorrupt, text: "CONTINUE record with no previous RAM block",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				id := b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 64 << 10}})
				b.SectionPart(id)
				return mark(b, be64(0x02|0x20), make([]byte, 20))
			}},
		{name: "mem_size block over total", want: ErrCorrupt, text: `RAM block "b" length 0x3000 exceeds the 0x2000 left of MEM_SIZE`,
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.SectionStart("ram", 0, 4)
				b.Raw(be64(0x2000 | 0x04))
				data, at := mark(b, append([]byte("\x01b"), be64(0x3000)...), make([]byte, 20))
				return data, at + 2
			}},
		{name: "mem_size empty name", want: ErrCorrupt, text: "empty RAM block name in MEM_SIZE",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.SectionStart("ram", 0, 4)
				b.Raw(be64(0x2000 | 0x04))
				return mark(b, []byte{0}, make([]byte, 20))
			}},
		{name: "too many blocks", want: ErrCorrupt, text: "more than 1024 RAM blocks",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.SectionStart("ram", 0, 4)
				b.Raw(be64(1025*4096 | 0x04))
				for i := 0; i < 1024; i++ {
					b.Raw(append([]byte{4, 'b', byte(i >> 8), byte(i), '.'}, be64(4096)...))
				}
				return mark(b, append([]byte("\x04last"), be64(4096)...), be64(0x10))
			}},
		{name: "footer names other section", want: ErrCorrupt, text: "footer names section 7",
			build: func() ([]byte, int64) {
				b, _ := inPart(streamtest.Options{})
				b.EOS()
				data, at := mark(b, append([]byte{0x7e}, be32(7)...), []byte{0})
				return data, at + 1
			}},
		{name: "missing footer", want: ErrCorrupt, text: "missing footer",
			build: func() ([]byte, int64) {
				b, _ := inPart(streamtest.Options{})
				b.EOS()
				return mark(b, []byte{0})
			}},
		{name: "footer in stream without footers", want: ErrCorrupt, text: "section footer in a stream without footers",
			build: func() ([]byte, int64) {
				b, id := inPart(streamtest.Options{NoFooters: true})
				b.EOS()
				return mark(b, append([]byte{0x7e}, be32(id)...), []byte{0})
			}},
		{name: "unknown command", want: ErrCorrupt, text: "unknown command 12",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 12, 0, 0}, make([]byte, 10))
				return data, at + 1
			}},
		{name: "invalid command 0", want: ErrCorrupt, text: "unknown command 0",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 0, 0, 0}, make([]byte, 10))
				return data, at + 1
			}},
		{name: "ping length", want: ErrCorrupt, text: "command PING with length 3 (want 4)",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 2, 0, 3, 1, 2, 3}, make([]byte, 10))
				return data, at + 3
			}},
		{name: "advise length", want: ErrCorrupt, text: "want 0 or 16",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 3, 0, 8}, make([]byte, 10))
				return data, at + 3
			}},
		{name: "discard version", want: ErrCorrupt, text: "RAM_DISCARD version 1",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 6, 0, 21, 1, 2, 'p', 'c', 0}, make([]byte, 16))
				return data, at + 5
			}},
		{name: "discard ranges", want: ErrCorrupt, text: "RAM_DISCARD length 22 does not fit",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 6, 0, 22, 0, 2, 'p', 'c', 0}, make([]byte, 17))
				return data, at + 3
			}},
		{name: "recv bitmap length", want: ErrCorrupt, text: "RECV_BITMAP length 4",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				data, at := mark(b, []byte{8, 0, 10, 0, 4, 2, 'p', 'c', 'x'})
				return data, at + 3
			}},
		{name: "byte after EOF", want: ErrCorrupt, text: "record type 0x01 after EOF",
			build: func() ([]byte, int64) {
				b, id := inPart(streamtest.Options{})
				b.EOS()
				b.Footer(id)
				b.EOF()
				return mark(b, []byte{1, 2, 3})
			}},
		{name: "vmdescription over limit", opts: Options{MaxVMDescription: 100}, want: ErrCorrupt, text: "VMDESCRIPTION length 101 over limit 100",
			build: func() ([]byte, int64) {
				b, id := inPart(streamtest.Options{})
				b.EOS()
				b.Footer(id)
				b.EOF()
				b.VMDescription(bytes.Repeat([]byte("x"), 101))
				return b.Bytes(), b.Len() - 105
			}},
		{name: "data after vmdescription", want: ErrCorrupt, text: "data after VMDESCRIPTION",
			build: func() ([]byte, int64) {
				b, id := inPart(streamtest.Options{})
				b.EOS()
				b.Footer(id)
				b.EOF()
				b.VMDescription([]byte(`{}`))
				return mark(b, []byte{0})
			}},
		{name: "too many sections", want: ErrCorrupt, text: "more than 4096 sections",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				for i := 0; i < 4096; i++ {
					id := b.SectionStart("ram", 0, 4)
					b.EOS()
					b.Footer(id)
				}
				b.SectionStart("ram", 0, 4)
				return b.Bytes(), b.Len() - 16
			}},
		{name: "hugepage size not a power of two", opts: Options{PostcopyRAM: CapOn, HugePageBlocks: []string{"pc.ram"}},
			want: ErrCorrupt, text: "page size 0x3000 is not a power of two",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{PostcopyRAM: true})
				b.Header()
				b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 8192, PageSize: 0x3000}})
				return b.Bytes(), b.Len() - 5 - 8 - 8
			}},
		{name: "device state does not end like a stream", want: ErrTruncated, text: "does not end with EOF",
			build: func() ([]byte, int64) {
				b := streamtest.New(streamtest.Options{})
				b.Header()
				b.Device("timer", 0, 2, []byte("registers that go on and on"))
				return b.Bytes(), b.Len()
			}},
	}
}

func TestCorruptStreams(t *testing.T) {
	for _, c := range corruptions() {
		t.Run(c.name, func(t *testing.T) {
			data, at := c.build()
			res := readAll(t, bytes.NewReader(data), c.opts)
			if res.err == nil {
				t.Fatalf("no error reading corrupt stream")
			}
			if !errors.Is(res.err, c.want) {
				t.Fatalf("error %v is not %v", res.err, c.want)
			}
			var e *Error
			errors.As(res.err, &e)
			if e.Offset != at {
				t.Fatalf("error at offset %d, want %d: %v", e.Offset, at, res.err)
			}
			if !strings.Contains(res.err.Error(), c.text) {
				t.Fatalf("error %q does not say %q", res.err, c.text)
			}
			if !bytes.Equal(res.out, data[:len(res.out)]) {
				t.Fatalf("items before the error are not a prefix of the stream")
			}
		})
	}
}

// A lenient reader turns every corruption after the header into opaque
// passthrough from the failing unit, and still reproduces the stream. The
// corrupt streams get a proper ending (a footer and EOF), since opaque
// passthrough still checks that the stream ends like one.
func TestLenientPassesCorruptionThrough(t *testing.T) {
	for _, c := range corruptions() {
		t.Run(c.name, func(t *testing.T) {
			data, at := c.build()
			if !errors.Is(c.want, ErrTruncated) {
				data = append(data[:len(data):len(data)], 0x7e, 0, 0, 0, 2, 0)
			}
			opts := c.opts
			opts.Lenient = true
			res := readAll(t, bytes.NewReader(data), opts)
			if at < 8 || errors.Is(c.want, ErrTruncated) {
				if res.err == nil {
					t.Fatalf("lenient reader accepted a stream with a bad header or tail")
				}
				return
			}
			if res.err != nil {
				t.Fatalf("lenient read failed: %v", res.err)
			}
			if !bytes.Equal(res.out, data) {
				t.Fatalf("lenient reconstruction differs at %d", firstDiff(res.out, data))
			}
			st := res.stats
			if st.OpaqueRestFrom < 0 || st.OpaqueRestFrom > at || !strings.Contains(st.OpaqueRestReason, c.text) {
				t.Fatalf("rest from %d (%q), corruption at %d (%q)", st.OpaqueRestFrom, st.OpaqueRestReason, at, c.text)
			}
		})
	}
}
