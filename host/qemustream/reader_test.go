package qemustream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"testing/iotest"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

// pageRef is what a reader said about one Page item.
type pageRef struct {
	Block  string
	Addr   uint64
	Offset int64
}

// result is everything a full read of a stream produced.
type result struct {
	out   []byte // concatenated item bytes
	pages []pageRef
	items int
	stats Stats
	err   error // nil when the read ended with io.EOF
}

// readAll drains a reader and checks the invariants every read must keep,
// whatever the input: items are contiguous, non-empty, bounded, and pages
// have exactly one page of bytes.
func readAll(t testing.TB, src io.Reader, opts Options) result {
	t.Helper()
	r := NewReader(src, opts)
	var res result
	maxOpaque := opts.MaxOpaque
	if maxOpaque <= 0 {
		maxOpaque = DefaultMaxOpaque
	}
	for {
		it, err := r.Next()
		if err != nil {
			res.stats = r.Stats()
			if err != io.EOF {
				res.err = err
				var e *Error
				if !errors.As(err, &e) {
					t.Fatalf("error %v (%T) is not a *qemustream.Error", err, err)
				}
			}
			if _, again := r.Next(); again != err {
				t.Fatalf("Next after %v returned %v", err, again)
			}
			return res
		}
		if it.Offset != int64(len(res.out)) {
			t.Fatalf("item %d at offset %d, want %d", res.items, it.Offset, len(res.out))
		}
		if len(it.Bytes) == 0 {
			t.Fatalf("empty item %d at offset %d", res.items, it.Offset)
		}
		switch it.Kind {
		case Page:
			if len(it.Bytes) != r.Stats().PageSize {
				t.Fatalf("page item of %d bytes, page size %d", len(it.Bytes), r.Stats().PageSize)
			}
			res.pages = append(res.pages, pageRef{it.Block, it.Addr, it.Offset})
		case Opaque:
			// A parsed unit is at most a few hundred bytes, except a
			// capabilities list; none of the test streams has one longer
			// than 1 KiB.
			if len(it.Bytes) > max(maxOpaque, 1024) {
				t.Fatalf("opaque item of %d bytes, limit %d", len(it.Bytes), maxOpaque)
			}
		default:
			t.Fatalf("item of kind %v", it.Kind)
		}
		res.out = append(res.out, it.Bytes...)
		res.items++
	}
}

// chunkReader returns reads of random sizes between 1 and max bytes.
type chunkReader struct {
	data []byte
	rng  *rand.Rand
	max  int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.data), 1+c.rng.IntN(c.max))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

var readers = []struct {
	name string
	wrap func([]byte) io.Reader
}{
	{"whole", func(b []byte) io.Reader { return bytes.NewReader(b) }},
	{"onebyte", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }},
	{"half", func(b []byte) io.Reader { return iotest.HalfReader(bytes.NewReader(b)) }},
	{"dataerr", func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) }},
	{"chunks", func(b []byte) io.Reader {
		return &chunkReader{data: b, rng: rand.New(rand.NewPCG(uint64(len(b)), 7)), max: 9000}
	}},
}

type shape struct {
	name string
	opts Options // reader options
	// rest is true when the stream is expected to go opaque before its
	// RAM is parsed, so no pages are found.
	rest  bool
	build func() *streamtest.Builder
}

func gen(cfg streamtest.Config) func() *streamtest.Builder {
	return func() *streamtest.Builder { return streamtest.Generate(cfg) }
}

// smallBlocks keep the generated streams near half a MiB, so that every
// shape can be read through every reader quickly, even under -race.
func smallBlocks() []streamtest.Block {
	return []streamtest.Block{
		{Name: "pc.ram", Length: 320 << 10, GPA: 0},
		{Name: "/rom@etc/acpi/tables", Length: 64 << 10, GPA: 0xfffe0000},
		{Name: "0000:00:01.0/vga.vram", Length: 128 << 10, GPA: 0xfd000000},
	}
}

func base(seed uint64) streamtest.Config {
	return streamtest.Config{Seed: seed, Blocks: smallBlocks(), DirtyPasses: 2, DirtyPages: 24, FinalDirty: 8,
		Devices: 5, ReturnPath: true}
}

func with(c streamtest.Config, f func(*streamtest.Config)) streamtest.Config {
	f(&c)
	return c
}

var uuid = [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

func hugeBlocks() []streamtest.Block {
	return []streamtest.Block{
		{Name: "pc.ram", Length: 512 << 10, PageSize: 2 << 20, GPA: 0},
		{Name: "/rom@etc/acpi/tables", Length: 64 << 10, GPA: 0xfffe0000},
		{Name: "mem1", Length: 256 << 10, PageSize: 1 << 30, GPA: 0x100000000},
	}
}

func shapes() []shape {
	return []shape{
		{name: "precopy", build: gen(base(1))},
		{name: "xbzrle", build: gen(with(base(2), func(c *streamtest.Config) { c.XBZRLE = true; c.DirtyPasses = 4 }))},
		{name: "compress", build: gen(with(base(3), func(c *streamtest.Config) { c.Compress = true }))},
		{name: "multifd", build: gen(with(base(4), func(c *streamtest.Config) { c.Multifd = true }))},
		{name: "no-configuration", build: gen(with(base(5), func(c *streamtest.Config) { c.NoConfiguration = true }))},
		{name: "no-footers", build: gen(with(base(6), func(c *streamtest.Config) { c.NoFooters = true }))},
		{name: "no-vmdesc", build: gen(with(base(7), func(c *streamtest.Config) { c.NoVMDescription = true }))},
		{name: "no-continue", build: gen(with(base(8), func(c *streamtest.Config) { c.NoContinue = true }))},
		{name: "no-devices", build: gen(with(base(9), func(c *streamtest.Config) { c.Devices = 0 }))},
		{name: "no-devices-no-vmdesc", build: gen(with(base(10), func(c *streamtest.Config) { c.Devices = 0; c.NoVMDescription = true }))},
		{name: "text-and-sparse", build: gen(with(base(11), func(c *streamtest.Config) {
			c.Mix[streamtest.ContentText], c.Mix[streamtest.ContentSparse] = 3, 3
		}))},
		{name: "ignore-shared-uuid", build: gen(with(base(12), func(c *streamtest.Config) {
			c.Capabilities = []string{"x-ignore-shared"}
			c.IgnoreShared = true
			c.UUID = &uuid
		}))},
		{name: "page-1k-bits", build: gen(with(base(13), func(c *streamtest.Config) { c.PageSize = 1024; c.PageBitsSubsection = true }))},
		{name: "page-64k", opts: Options{PageSize: 65536}, build: gen(with(base(14), func(c *streamtest.Config) { c.PageSize = 65536 }))},
		{name: "postcopy-hugepages", build: gen(with(base(15), func(c *streamtest.Config) {
			c.PostcopyRAM = true
			c.Blocks = hugeBlocks()
		}))},
		{name: "postcopy-hugepages-ignore-shared", build: gen(with(base(16), func(c *streamtest.Config) {
			c.PostcopyRAM = true
			c.IgnoreShared = true
			c.Capabilities = []string{"x-ignore-shared"}
			c.Blocks = hugeBlocks()
		}))},
		{name: "postcopy-explicit-options",
			opts: Options{PostcopyRAM: CapOn, IgnoreShared: CapOn, HugePageBlocks: []string{"pc.ram", "mem1"}},
			build: gen(with(base(17), func(c *streamtest.Config) {
				c.PostcopyRAM = true
				c.IgnoreShared = true
				c.Blocks = hugeBlocks()
			}))},
		{name: "postcopy-packaged", build: postcopyStream},
		{name: "all-commands", build: allCommandsStream},
		{name: "zero-fill", build: func() *streamtest.Builder {
			b := streamtest.New(streamtest.Options{})
			b.Header()
			id := b.RAMStart([]streamtest.Block{{Name: "pc.ram", Length: 64 << 10}})
			b.SectionEnd(id)
			b.Zero("pc.ram", 0, 0xff)
			b.Zero("pc.ram", 4096, 0)
			b.Page("pc.ram", 8192, bytes.Repeat([]byte{7}, 4096))
			b.EOS()
			b.Footer(id)
			b.EOF()
			b.VMDescription([]byte(`{"page_size": 4096, "devices": []}`))
			return b
		}},
		{name: "early-setup-full", rest: true, build: func() *streamtest.Builder {
			b := streamtest.New(streamtest.Options{})
			b.Header()
			b.Device("virtio-mem-early", 0, 1, []byte{1, 2, 3, 0, 0, 0, 4})
			ram := b.RAMStart(streamtest.DefaultBlocks())
			b.SectionPart(ram)
			b.Page("pc.ram", 0, bytes.Repeat([]byte{9}, 4096))
			b.EOS()
			b.Footer(ram)
			b.SectionEnd(ram)
			b.EOS()
			b.Footer(ram)
			b.Device("timer", 0, 2, make([]byte, 40))
			b.EOF()
			b.VMDescription([]byte(`{"page_size": 4096, "devices": [{"name": "timer"}]}`))
			return b
		}},
		{name: "block-migration-first", rest: true, build: func() *streamtest.Builder {
			b := streamtest.New(streamtest.Options{})
			b.Header()
			blk := b.SectionStart("block", 0, 1)
			b.Raw([]byte{0, 0, 0, 0, 0, 0, 0, 2}) // BLK_MIG_FLAG_EOS
			b.Footer(blk)
			ram := b.RAMStart(streamtest.DefaultBlocks())
			b.SectionPart(ram)
			b.Page("pc.ram", 4096, bytes.Repeat([]byte{5}, 4096))
			b.EOS()
			b.Footer(ram)
			b.EOF()
			return b
		}},
		{name: "mapped-ram", rest: true, build: func() *streamtest.Builder {
			b := streamtest.New(streamtest.Options{Capabilities: []string{"mapped-ram"}})
			b.Header()
			ram := b.RAMStart(streamtest.DefaultBlocks())
			b.SectionEnd(ram)
			b.EOS()
			b.Footer(ram)
			b.Device("timer", 0, 2, make([]byte, 40))
			b.EOF()
			b.VMDescription([]byte(`{"page_size": 4096}`))
			return b
		}},
		{name: "colo", build: func() *streamtest.Builder {
			b := streamtest.Generate(with(base(18), func(c *streamtest.Config) { c.NoVMDescription = true; c.Devices = 0 }))
			// ENABLE_COLO comes before EOF; after it COLO checkpoint
			// traffic continues on the same stream.
			s := b.Bytes()
			tailEOF := s[len(s)-1]
			b2 := streamtest.New(streamtest.Options{})
			b2.Raw(s[:len(s)-1])
			b2.Command(streamtest.CmdEnableCOLO, nil)
			b2.Raw([]byte{tailEOF})
			b2.Raw([]byte("\x00\x00\x00\x01colo-checkpoint-messages"))
			b2.Records, b2.Counts = b.Records, b.Counts
			b2.Counts.Commands[streamtest.CmdEnableCOLO]++
			return b2
		}},
	}
}

// postcopyStream is a precopy phase, then the switch to postcopy: discard
// commands, a PACKAGED blob holding device state and LISTEN/RUN, and RAM
// pages that keep coming after it, ending in END + EOF without VMDESCRIPTION.
func postcopyStream() *streamtest.Builder {
	o := streamtest.Options{PostcopyRAM: true}
	b := streamtest.New(o)
	b.Header()
	b.OpenReturnPath()
	b.Ping(1)
	b.PostcopyAdvise(4096)
	ram := b.RAMStart(streamtest.DefaultBlocks())
	b.SectionPart(ram)
	for a := uint64(0); a < 8; a++ {
		b.Page("pc.ram", a*4096, bytes.Repeat([]byte{byte(a)}, 4096))
	}
	b.Zero("0000:00:01.0/vga.vram", 0, 0)
	b.EOS()
	b.Footer(ram)
	b.RAMDiscard("pc.ram", [][2]uint64{{0, 4096}, {16384, 8192}})

	pkg := streamtest.New(o)
	pkg.Command(streamtest.CmdPostcopyListen, nil)
	pkg.Device("timer", 0, 2, []byte{0, 0, 0, 0, 0, 0, 0x7e, 0, 0, 0, 2, 0})
	pkg.Device("cpu", 0, 12, bytes.Repeat([]byte{0, 1, 0x06, 0}, 50))
	pkg.Ping(3)
	pkg.Command(streamtest.CmdPostcopyRun, nil)
	b.Packaged(pkg.Bytes())
	b.ResetContinue()

	b.SectionPart(ram)
	b.Page("pc.ram", 0, bytes.Repeat([]byte{0xaa}, 4096))
	b.Page("pc.ram", 16384, bytes.Repeat([]byte{0xbb}, 4096))
	b.Page("0000:00:01.0/vga.vram", 4096, bytes.Repeat([]byte{0xcc}, 4096))
	b.EOS()
	b.Footer(ram)
	b.SectionEnd(ram)
	b.Page("pc.ram", 20480, bytes.Repeat([]byte{0xdd}, 4096))
	b.EOS()
	b.Footer(ram)
	b.EOF()
	return b
}

func allCommandsStream() *streamtest.Builder {
	b := streamtest.New(streamtest.Options{})
	b.Header()
	b.OpenReturnPath()
	b.Ping(1)
	b.PostcopyAdvise(0)
	b.Command(streamtest.CmdPostcopyResume, nil)
	b.RecvBitmap("pc.ram")
	b.Command(streamtest.CmdSwitchoverStart, nil)
	ram := b.RAMStart(streamtest.DefaultBlocks())
	b.SectionPart(ram)
	b.Page("pc.ram", 0, bytes.Repeat([]byte{1}, 4096))
	b.EOS()
	b.Footer(ram)
	b.Ping(2)
	b.Command(streamtest.CmdPostcopyListen, nil)
	b.Command(streamtest.CmdPostcopyRun, nil)
	b.RAMDiscard("pc.ram", [][2]uint64{{0, 4096}})
	b.Packaged(nil)
	b.SectionEnd(ram)
	b.Page("pc.ram", 4096, bytes.Repeat([]byte{2}, 4096))
	b.EOS()
	b.Footer(ram)
	b.Device("timer", 0, 2, make([]byte, 24))
	b.EOF()
	b.VMDescription([]byte(`{"page_size": 4096, "devices": [{"name": "timer"}]}`))
	return b
}

func TestReconstructsEveryShape(t *testing.T) {
	for _, sh := range shapes() {
		t.Run(sh.name, func(t *testing.T) {
			b := sh.build()
			data := b.Bytes()
			for _, rd := range readers {
				if rd.name == "onebyte" && len(data) > 1<<20 {
					continue
				}
				t.Run(rd.name, func(t *testing.T) {
					res := readAll(t, rd.wrap(data), sh.opts)
					if res.err != nil {
						t.Fatalf("read failed: %v", res.err)
					}
					if !bytes.Equal(res.out, data) {
						t.Fatalf("reconstruction differs: %d bytes out, %d in; first difference at %d",
							len(res.out), len(data), firstDiff(res.out, data))
					}
					checkAgainstBuilder(t, b, res, sh)
				})
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// checkAgainstBuilder compares what the reader found with what the builder
// logged writing.
func checkAgainstBuilder(t *testing.T, b *streamtest.Builder, res result, sh shape) {
	t.Helper()
	st := res.stats
	if sh.rest {
		if st.OpaqueRestFrom < 0 {
			t.Fatalf("stream was expected to go opaque before RAM, stats %+v", st)
		}
		if len(res.pages) != 0 {
			t.Fatalf("found %d pages in a stream passed through opaque", len(res.pages))
		}
	} else {
		var want []pageRef
		for _, rec := range b.Records {
			if rec.Kind == streamtest.Page {
				want = append(want, pageRef{rec.Block, rec.Addr, rec.DataOffset})
			}
		}
		if !slices.Equal(res.pages, want) {
			t.Fatalf("pages found differ from pages written: found %d, wrote %d; first found %v, first written %v",
				len(res.pages), len(want), first(res.pages), first(want))
		}
		c := b.Counts
		got := [4]uint64{st.Records[RecZero], st.Records[RecPage], st.Records[RecXBZRLE], st.Records[RecCompressPage]}
		if exp := [4]uint64{c.Zero, c.Page, c.XBZRLE, c.Compressed}; got != exp {
			t.Fatalf("zero/page/xbzrle/compressed records %v, wrote %v", got, exp)
		}
		if st.Records[RecMemSize] != c.MemSize || st.Records[RecEOS] != c.EOS || st.Records[RecMultifdFlush] != c.MultifdFlush {
			t.Fatalf("memsize/eos/flush %d/%d/%d, wrote %d/%d/%d", st.Records[RecMemSize], st.Records[RecEOS],
				st.Records[RecMultifdFlush], c.MemSize, c.EOS, c.MultifdFlush)
		}
		if st.RAMPasses != c.RAMParts || st.SectionEnd != c.End || st.SectionStart != c.Start {
			t.Fatalf("ram passes/end/start %d/%d/%d, wrote %d/%d/%d", st.RAMPasses, st.SectionEnd, st.SectionStart,
				c.RAMParts, c.End, c.Start)
		}
		for cmd, n := range c.Commands {
			if st.Commands[cmd] != n {
				t.Fatalf("command %v seen %d times, written %d", Command(cmd), st.Commands[cmd], n)
			}
		}
		if st.PageBytes != int64(len(want))*int64(st.PageSize) {
			t.Fatalf("PageBytes %d for %d pages of %d", st.PageBytes, len(want), st.PageSize)
		}
	}
	if st.OpaqueBytes+st.PageBytes != int64(len(b.Bytes())) {
		t.Fatalf("opaque %d + page %d bytes != stream %d", st.OpaqueBytes, st.PageBytes, len(b.Bytes()))
	}
	if st.PageSize != b.PageSize() {
		t.Fatalf("page size %d, stream has %d", st.PageSize, b.PageSize())
	}
	if st.EOF != b.Counts.EOF {
		t.Fatalf("EOF %v, written %v", st.EOF, b.Counts.EOF)
	}
	if st.VMDescriptionLen != b.Counts.VMDescriptionLen {
		t.Fatalf("VMDESCRIPTION length %d, written %d", st.VMDescriptionLen, b.Counts.VMDescriptionLen)
	}
}

func first[T any](s []T) any {
	if len(s) == 0 {
		return nil
	}
	return s[0]
}

func TestBlocksAndCapabilities(t *testing.T) {
	for _, sh := range shapes() {
		switch sh.name {
		case "postcopy-hugepages", "postcopy-hugepages-ignore-shared", "postcopy-explicit-options", "ignore-shared-uuid", "precopy":
		default:
			continue
		}
		t.Run(sh.name, func(t *testing.T) {
			b := sh.build()
			res := readAll(t, bytes.NewReader(b.Bytes()), sh.opts)
			if res.err != nil {
				t.Fatal(res.err)
			}
			st := res.stats
			want := smallBlocks()
			postcopy := sh.name != "precopy" && sh.name != "ignore-shared-uuid"
			ignore := sh.name != "precopy" && sh.name != "postcopy-hugepages"
			if postcopy {
				want = hugeBlocks()
			}
			if st.PostcopyRAM != postcopy || st.IgnoreShared != ignore {
				t.Fatalf("postcopy-ram %v, x-ignore-shared %v; want %v, %v", st.PostcopyRAM, st.IgnoreShared, postcopy, ignore)
			}
			if len(st.Blocks) != len(want) {
				t.Fatalf("blocks %+v, want %+v", st.Blocks, want)
			}
			for i, w := range want {
				g := st.Blocks[i]
				wp, wg := w.PageSize, w.GPA
				if !postcopy {
					wp = 0
				}
				if !ignore {
					wg = 0
				}
				if g.Name != w.Name || g.Length != w.Length || g.PageSize != wp || g.GPA != wg {
					t.Fatalf("block %d = %+v, want %+v (page size %#x, gpa %#x)", i, g, w, wp, wg)
				}
			}
			if ignore && !slices.Contains(st.Capabilities, "x-ignore-shared") && sh.opts.IgnoreShared != CapOn {
				t.Fatalf("capabilities %v", st.Capabilities)
			}
			if st.MachineType != "pc-q35-7.2" {
				t.Fatalf("machine type %q", st.MachineType)
			}
		})
	}
}

// The reader must take its page size from the stream's target-page-bits and
// refuse an option that contradicts it.
func TestPageSizeFromConfiguration(t *testing.T) {
	b := streamtest.Generate(with(base(30), func(c *streamtest.Config) { c.PageSize = 16384; c.PageBitsSubsection = true }))
	res := readAll(t, bytes.NewReader(b.Bytes()), Options{})
	if res.err != nil || res.stats.PageSize != 16384 {
		t.Fatalf("err %v, page size %d", res.err, res.stats.PageSize)
	}
	res = readAll(t, bytes.NewReader(b.Bytes()), Options{PageSize: 4096})
	if !errors.Is(res.err, ErrUnsupported) {
		t.Fatalf("contradicting PageSize option gave %v", res.err)
	}
}

func TestSmallMaxOpaqueMergesAndSplits(t *testing.T) {
	b := streamtest.Generate(base(31))
	for _, limit := range []int{1, 100, 4096, 1 << 20} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			res := readAll(t, bytes.NewReader(b.Bytes()), Options{MaxOpaque: limit})
			if res.err != nil || !bytes.Equal(res.out, b.Bytes()) {
				t.Fatalf("err %v, equal %v", res.err, bytes.Equal(res.out, b.Bytes()))
			}
			if len(res.pages) != int(b.Counts.Page) {
				t.Fatalf("%d pages, want %d", len(res.pages), b.Counts.Page)
			}
		})
	}
}

// Opaque items merge adjacent non-page bytes: a stream of zero pages and
// device state needs few items, not one per record.
func TestOpaqueItemsAreFewAndLarge(t *testing.T) {
	b := streamtest.Generate(with(base(32), func(c *streamtest.Config) {
		c.Mix = [streamtest.NumContents]int{streamtest.ContentZero: 1}
	}))
	res := readAll(t, bytes.NewReader(b.Bytes()), Options{})
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.stats.Records[RecZero] < 150 {
		t.Fatalf("only %d zero records", res.stats.Records[RecZero])
	}
	if limit := len(b.Bytes())/DefaultMaxOpaque + 1; int(res.stats.OpaqueItems) > limit {
		t.Fatalf("%d opaque items for %d bytes with no pages, want at most %d", res.stats.OpaqueItems, len(b.Bytes()), limit)
	}
}

func TestDetect(t *testing.T) {
	s := streamtest.Generate(base(33)).Bytes()
	cases := []struct {
		in   []byte
		want bool
	}{
		{s, true},
		{s[:8], true},
		{s[:4], true},
		{s[:3], false},
		{nil, false},
		{[]byte("QEVM\x00\x00\x00\x02"), false},
		{[]byte("QEVX\x00\x00\x00\x03"), false},
		{[]byte("GET / HTTP/1.1\r\n"), false},
	}
	for _, c := range cases {
		if got := Detect(c.in); got != c.want {
			t.Errorf("Detect(%q) = %v, want %v", c.in[:min(len(c.in), 12)], got, c.want)
		}
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestSourceErrorsAreWrapped(t *testing.T) {
	s := streamtest.Generate(base(34)).Bytes()
	boom := errors.New("connection reset by peer")
	for _, cut := range []int{0, 5, 100, len(s) / 2, len(s) - 1} {
		res := readAll(t, &failingReader{data: s[:cut], err: boom}, Options{})
		if !errors.Is(res.err, boom) {
			t.Fatalf("cut %d: error %v does not wrap the source's", cut, res.err)
		}
		if !bytes.Equal(res.out, s[:len(res.out)]) {
			t.Fatalf("cut %d: items before the error are not a prefix of the stream", cut)
		}
	}
	res := readAll(t, iotest.TimeoutReader(bytes.NewReader(s)), Options{})
	if !errors.Is(res.err, iotest.ErrTimeout) {
		t.Fatalf("timeout reader gave %v", res.err)
	}
}

type zeroReader struct{}

func (zeroReader) Read([]byte) (int, error) { return 0, nil }

func TestNoProgressReader(t *testing.T) {
	res := readAll(t, zeroReader{}, Options{})
	if !errors.Is(res.err, io.ErrNoProgress) {
		t.Fatalf("got %v", res.err)
	}
}

func TestInvalidOptions(t *testing.T) {
	for _, ps := range []int{-1, 3, 512, 4095, 1 << 17} {
		res := readAll(t, bytes.NewReader(nil), Options{PageSize: ps})
		if !errors.Is(res.err, ErrUnsupported) {
			t.Fatalf("PageSize %d gave %v", ps, res.err)
		}
	}
}

// Reading allocates per stream, never per page: a stream with 16 times
// the pages costs the same number of allocations.
func TestNoAllocationPerPage(t *testing.T) {
	small := streamtest.Generate(with(base(35), func(c *streamtest.Config) {
		c.Blocks = []streamtest.Block{{Name: "pc.ram", Length: 256 << 10}}
		c.Mix = [streamtest.NumContents]int{streamtest.ContentRandom: 1, streamtest.ContentZero: 1}
	})).Bytes()
	big := streamtest.Generate(with(base(35), func(c *streamtest.Config) {
		c.Blocks = []streamtest.Block{{Name: "pc.ram", Length: 4 << 20}}
		c.Mix = [streamtest.NumContents]int{streamtest.ContentRandom: 1, streamtest.ContentZero: 1}
	})).Bytes()
	count := func(data []byte) float64 {
		return testing.AllocsPerRun(5, func() {
			r := NewReader(bytes.NewReader(data), Options{})
			for {
				if _, err := r.Next(); err != nil {
					if err != io.EOF {
						t.Fatal(err)
					}
					return
				}
			}
		})
	}
	// A tolerance of two allocations absorbs runtime noise (the race
	// detector's, map growth timing); the big stream has thousands of pages
	// more than the small one.
	a, b := count(small), count(big)
	if b > a+2 || a > b+2 {
		t.Fatalf("%v allocations for %d bytes but %v for %d bytes", a, len(small), b, len(big))
	}
}
