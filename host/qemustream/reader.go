package qemustream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ItemKind says what an Item's bytes are.
type ItemKind uint8

const (
	// Opaque bytes are forwarded as they are: framing, RAM record headers,
	// zero-page records, XBZRLE and compressed bodies, commands, device
	// state, VMDESCRIPTION.
	Opaque ItemKind = iota
	// Page bytes are exactly the data of one RAM PAGE record: PageSize bytes
	// of guest memory at Addr in RAM block Block.
	Page
)

func (k ItemKind) String() string {
	switch k {
	case Opaque:
		return "opaque"
	case Page:
		return "page"
	}
	return fmt.Sprintf("ItemKind(%d)", uint8(k))
}

// Item is one piece of the stream.
type Item struct {
	Kind ItemKind
	// Bytes are the exact stream bytes of this item. They alias the
	// reader's buffer and are valid only until the next call to Next.
	Bytes []byte
	// Block is the RAMBlock idstr of a Page item.
	Block string
	// Addr is the offset of a Page item inside its RAM block.
	Addr uint64
	// Offset is the stream offset of Bytes[0].
	Offset int64
}

// Capability tells the reader whether a migration capability that changes
// the RAM record layout is on at the source.
type Capability uint8

const (
	// CapAuto infers the capability from the stream: x-ignore-shared from
	// the configuration's capabilities subsection, postcopy-ram from a
	// 16-byte POSTCOPY_ADVISE command. Both are what the destination QEMU
	// relies on too, so they are present in every stream that uses them.
	CapAuto Capability = iota
	// CapOn forces the capability on, whatever the stream says.
	CapOn
	// CapOff forces the capability off, whatever the stream says.
	CapOff
)

// Options configure a Reader. The zero value reads an x86 stream and infers
// capabilities from the stream.
type Options struct {
	// PageSize is the source's target page size; 0 means 4096 (x86). A
	// configuration/target-page-bits subsection sets it when this is 0 and
	// must agree with it otherwise.
	PageSize int
	// PostcopyRAM is the postcopy-ram capability: with it, MEM_SIZE entries
	// of hugepage-backed blocks carry a be64 page size.
	PostcopyRAM Capability
	// IgnoreShared is the x-ignore-shared capability: with it, every
	// MEM_SIZE entry carries a be64 guest physical address.
	IgnoreShared Capability
	// HugePageBlocks names the RAM blocks whose page size differs from the
	// source's host page size (the ones QEMU writes a page size for when
	// postcopy-ram is on). Nil means detect it from the bytes, which is
	// unambiguous because a page size is a power of two no larger than
	// 2^40 while what can follow instead is a block name, a page-aligned
	// address or a RAM record header with flag bits set.
	HugePageBlocks []string
	// MaxOpaque bounds an opaque item's length; 0 means DefaultMaxOpaque,
	// and values over 16 MiB count as 16 MiB (the buffer grows with it).
	// A single parsed unit longer than this (only a configuration
	// capabilities list can be) is still returned whole.
	MaxOpaque int
	// MaxVMDescription bounds the VMDESCRIPTION JSON length; 0 means
	// DefaultMaxVMDescription.
	MaxVMDescription uint32
	// Live makes the reader hand out every byte it has parsed before it
	// reads the source again. A relay of a live migration needs it: the
	// source QEMU may wait (for the destination's return path) right
	// after its last write, and bytes held back in a pending opaque run
	// would then never reach the destination. It costs a few more,
	// smaller opaque items.
	Live bool
	// Lenient turns a corrupt or unsupported record after the file header
	// into opaque passthrough of the rest of the stream instead of an error.
	// The output stays byte-exact; page awareness is lost from that point
	// and Stats.OpaqueRestReason says why. Truncation and read errors are
	// still errors.
	Lenient bool
}

// Block is a RAM block named by a MEM_SIZE preamble.
type Block struct {
	Name   string
	Length uint64 // used_length in bytes
	// PageSize is the block's page size when the stream carries it
	// (postcopy-ram with a hugepage-backed block), else 0.
	PageSize uint64
	// GPA is the block's guest physical address when the stream carries it
	// (x-ignore-shared), else 0.
	GPA uint64
}

// Stats counts what the reader has seen so far.
type Stats struct {
	MachineType  string
	Capabilities []string // from configuration/capabilities
	PageSize     int
	PostcopyRAM  bool // as resolved from options and stream
	IgnoreShared bool

	SectionStart, SectionPart, SectionEnd, SectionFull uint64
	Footers                                            uint64
	// RAMPasses counts SECTION_PART sections of "ram": the live precopy
	// iterations.
	RAMPasses uint64
	Records   [numRecordKinds]uint64 // indexed by RecordKind
	Commands  [numCommands]uint64    // indexed by Command
	// PackagedBytes is the total length of PACKAGED blobs, passed opaque.
	PackagedBytes int64
	Blocks        []Block

	EOF bool // the QEMU_VM_EOF marker was seen (or, in opaque-rest mode, the stream ends like one)
	// VMDescriptionLen is the JSON length of the VMDESCRIPTION, or -1.
	VMDescriptionLen int64

	// OpaqueRestFrom is the offset from which the rest of the stream is
	// passed through unparsed, or -1; OpaqueRestReason says why.
	OpaqueRestFrom   int64
	OpaqueRestReason string

	OpaqueItems, PageItems uint64
	OpaqueBytes, PageBytes int64
}

type state uint8

const (
	stHeader state = iota
	stConfig
	stSubsection
	stTop
	stRAM
	stMemSize
	stFooter
	stAfterEOF
	stAfterVMDesc
	stRest
	stDone
)

type footerMode uint8

const (
	footersUnknown footerMode = iota
	footersOn
	footersOff
)

// Reader splits a migration stream into items. It is not safe for
// concurrent use. Next blocks in the underlying reader's Read; to cancel,
// close the underlying reader.
type Reader struct {
	src  io.Reader
	opts Options

	buf    []byte
	start  int   // first byte of the opaque run not yet handed out
	pos    int   // first unparsed byte
	end    int   // end of buffered data
	base   int64 // stream offset of buf[0]
	srcErr error // first error from src, io.EOF included

	err   error // sticky result of Next once it failed or ended
	state state

	skip     int64  // bytes of a length-delimited opaque body still to pass
	skipWhat string // what skip is, for a truncation error

	pagePending bool
	pageBlock   string
	pageAddr    uint64

	pageSize     int
	flagMask     uint64
	maxOpaque    int
	maxVMDesc    uint32
	postcopyRAM  bool
	ignoreShared bool
	mappedRAM    bool
	colo         bool

	sections   map[uint32]bool // section id -> is "ram"
	ramSection uint32
	footers    footerMode
	last       int    // index in stats.Blocks of the last page record's block
	memLeft    uint64 // MEM_SIZE total not yet covered by entries

	tail  tailCheck
	stats Stats
}

// NewReader returns a Reader of the migration stream r. Invalid options are
// reported by the first call to Next.
func NewReader(r io.Reader, opts Options) *Reader {
	rd := &Reader{src: r, opts: opts, last: -1, sections: make(map[uint32]bool)}
	rd.stats.VMDescriptionLen = -1
	rd.stats.OpaqueRestFrom = -1
	rd.maxOpaque = opts.MaxOpaque
	if rd.maxOpaque <= 0 {
		rd.maxOpaque = DefaultMaxOpaque
	}
	rd.maxOpaque = min(rd.maxOpaque, maxMaxOpaque)
	rd.maxVMDesc = opts.MaxVMDescription
	if rd.maxVMDesc == 0 {
		rd.maxVMDesc = DefaultMaxVMDescription
	}
	rd.postcopyRAM = opts.PostcopyRAM == CapOn
	rd.ignoreShared = opts.IgnoreShared == CapOn
	ps := opts.PageSize
	if ps == 0 {
		ps = DefaultPageSize
	}
	if !validPageSize(ps) {
		rd.err = &Error{What: fmt.Sprintf("option PageSize %d is not a power of two in [1 KiB, 64 KiB]", opts.PageSize), Err: ErrUnsupported}
		return rd
	}
	rd.setPageSize(ps)
	// The buffer must hold the longest unit parsed in one piece (a page
	// record with a 255-byte block name and a compressed body of a 64 KiB
	// page, or a full capabilities list) next to a maximal opaque run, so
	// that its size never depends on the stream.
	size := rd.maxOpaque + 20<<10 + 2*maxPageSize
	if size < 256<<10 {
		size = 256 << 10
	}
	rd.buf = make([]byte, size)
	return rd
}

const (
	maxPageSize = 64 << 10
	// maxMaxOpaque caps MaxOpaque, and with it the buffer size.
	maxMaxOpaque = 16 << 20
)

func validPageSize(ps int) bool {
	return ps >= 1024 && ps <= maxPageSize && ps&(ps-1) == 0
}

func (r *Reader) setPageSize(ps int) {
	r.pageSize = ps
	r.flagMask = uint64(ps - 1)
	r.stats.PageSize = ps
}

// Detect reports whether prefix looks like the start of a QEMU migration
// stream: the QEVM magic and, when 8 bytes are given, version 3.
func Detect(prefix []byte) bool {
	if len(prefix) < 4 || binary.BigEndian.Uint32(prefix) != fileMagic {
		return false
	}
	return len(prefix) < 8 || binary.BigEndian.Uint32(prefix[4:]) == fileVersion
}

// Stats returns a snapshot of what the reader has seen so far.
func (r *Reader) Stats() Stats {
	s := r.stats
	s.Blocks = append([]Block(nil), r.stats.Blocks...)
	s.Capabilities = append([]string(nil), r.stats.Capabilities...)
	s.PostcopyRAM = r.postcopyRAM
	s.IgnoreShared = r.ignoreShared
	return s
}

// Next returns the next item of the stream, or io.EOF after the last byte.
// After any other error the stream is unusable and Next keeps returning that
// error.
func (r *Reader) Next() (Item, error) {
	if r.err != nil {
		return Item{}, r.err
	}
	if r.pagePending {
		return r.takePage(), nil
	}
	for {
		if r.pos-r.start >= r.maxOpaque {
			return r.takeOpaque(), nil
		}
		var err error
		switch {
		case r.skip > 0:
			err = r.passSkip()
		case r.state == stRest:
			err = r.passRest()
		case r.state == stDone:
			if r.pos > r.start {
				return r.takeOpaque(), nil
			}
			r.err = io.EOF
			return Item{}, io.EOF
		default:
			err = r.step()
		}
		if err == errFlush {
			return r.takeOpaque(), nil
		}
		if err != nil {
			if r.recover(err) {
				continue
			}
			r.err = err
			return Item{}, err
		}
		if r.pagePending {
			if r.pos > r.start {
				return r.takeOpaque(), nil
			}
			return r.takePage(), nil
		}
	}
}

// recover switches a lenient reader to opaque-rest mode on a format error.
// The failed unit has not been consumed, so the passthrough starts at its
// first byte and no byte is lost.
func (r *Reader) recover(err error) bool {
	if !r.opts.Lenient || r.state == stHeader || r.state == stRest || r.skip > 0 {
		return false
	}
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupported) {
		return false
	}
	r.goRest("lenient: " + err.Error())
	return true
}

func (r *Reader) takeOpaque() Item {
	it := Item{Kind: Opaque, Bytes: r.buf[r.start:r.pos:r.pos], Offset: r.base + int64(r.start)}
	r.stats.OpaqueItems++
	r.stats.OpaqueBytes += int64(r.pos - r.start)
	r.start = r.pos
	return it
}

func (r *Reader) takePage() Item {
	end := r.pos + r.pageSize
	it := Item{Kind: Page, Bytes: r.buf[r.pos:end:end], Block: r.pageBlock, Addr: r.pageAddr, Offset: r.base + int64(r.pos)}
	r.pos, r.start = end, end
	r.pagePending = false
	r.stats.PageItems++
	r.stats.PageBytes += int64(r.pageSize)
	return it
}

// need makes n unparsed bytes available at buf[pos:]. It returns errFlush
// when that needs buffer room held by the pending opaque run, and io.EOF
// (or the source's error) when the stream ends first.
func (r *Reader) need(n int) error {
	for r.end-r.pos < n {
		if len(r.buf)-r.pos < n {
			if r.pos > r.start {
				return errFlush
			}
			r.compact()
		}
		if r.srcErr != nil {
			return r.srcErr
		}
		if r.opts.Live && r.pos > r.start {
			// Hand out the pending run before a Read that may block.
			return errFlush
		}
		r.fill()
	}
	return nil
}

// compact moves the unparsed bytes to the front of the buffer. It is only
// called with no pending opaque run, so it moves less than one unit.
func (r *Reader) compact() {
	if r.pos == 0 {
		return
	}
	n := copy(r.buf, r.buf[r.pos:r.end])
	r.base += int64(r.pos)
	r.start, r.pos, r.end = 0, 0, n
}

// fill does one Read into the free tail of the buffer.
func (r *Reader) fill() {
	for tries := 0; tries < 100; tries++ {
		n, err := r.src.Read(r.buf[r.end:])
		if n < 0 || n > len(r.buf)-r.end {
			r.srcErr = fmt.Errorf("source reader returned invalid count %d", n)
			return
		}
		r.end += n
		if err != nil {
			r.srcErr = err
			return
		}
		if n > 0 {
			return
		}
	}
	r.srcErr = io.ErrNoProgress
}

// want is need with the stream ending turned into a truncation error that
// names the unit being read.
func (r *Reader) want(n int, what string) error {
	err := r.need(n)
	if err == nil || err == errFlush {
		return err
	}
	return r.endError(err, what)
}

func (r *Reader) endError(err error, what string) error {
	if err == io.EOF {
		return &Error{Offset: r.base + int64(r.pos),
			What: fmt.Sprintf("%s cut short (stream ends at offset %d)", what, r.base+int64(r.end)),
			Err:  ErrTruncated}
	}
	return &Error{Offset: r.base + int64(r.end), What: "reading " + what, Err: err}
}

// atEnd reports whether the stream has ended exactly at pos.
func (r *Reader) atEnd() (bool, error) {
	err := r.need(1)
	switch err {
	case nil:
		return false, nil
	case io.EOF:
		return true, nil
	case errFlush:
		return false, err
	}
	return false, r.endError(err, "stream")
}

// fits reports whether a unit of n bytes can join the pending opaque run
// without pushing it past maxOpaque. A unit longer than maxOpaque fits an
// empty run.
func (r *Reader) fits(n int) bool {
	return r.pos == r.start || r.pos-r.start+n <= r.maxOpaque
}

func (r *Reader) corrupt(off int, format string, args ...any) error {
	return &Error{Offset: r.base + int64(r.pos+off), What: fmt.Sprintf(format, args...), Err: ErrCorrupt}
}

func (r *Reader) unsupported(off int, format string, args ...any) error {
	return &Error{Offset: r.base + int64(r.pos+off), What: fmt.Sprintf(format, args...), Err: ErrUnsupported}
}

func (r *Reader) be16(off int) uint16 { return binary.BigEndian.Uint16(r.buf[r.pos+off:]) }
func (r *Reader) be32(off int) uint32 { return binary.BigEndian.Uint32(r.buf[r.pos+off:]) }
func (r *Reader) be64(off int) uint64 { return binary.BigEndian.Uint64(r.buf[r.pos+off:]) }

// passSkip hands through the body of a length-delimited opaque unit
// (PACKAGED blob, long command payload, VMDESCRIPTION JSON).
func (r *Reader) passSkip() error {
	if r.pos == r.end {
		if err := r.want(1, r.skipWhat); err != nil {
			return err
		}
	}
	n := int64(min(r.end-r.pos, r.maxOpaque-(r.pos-r.start)))
	n = min(n, r.skip)
	r.pos += int(n)
	r.skip -= n
	return nil
}

// passRest hands through everything up to the end of the stream, checking
// only that the stream ends the way a migration stream ends.
func (r *Reader) passRest() error {
	if r.pos == r.end {
		done, err := r.atEnd()
		if err != nil {
			return err
		}
		if done {
			return r.finishRest()
		}
	}
	n := min(r.end-r.pos, r.maxOpaque-(r.pos-r.start))
	r.tail.observe(r.buf[r.pos:r.pos+n], r.base+int64(r.pos), r.maxVMDesc)
	r.pos += n
	return nil
}

// goRest switches to opaque passthrough of the rest of the stream.
func (r *Reader) goRest(reason string) {
	r.state = stRest
	r.stats.OpaqueRestFrom = r.base + int64(r.pos)
	r.stats.OpaqueRestReason = reason
}

func (r *Reader) finishRest() error {
	end := r.base + int64(r.pos)
	if r.colo {
		// COLO keeps streaming checkpoints after the first EOF; there is
		// no fixed tail to check.
		r.state = stDone
		return nil
	}
	eof, vmdesc, ok := r.tail.finish(end, r.footers == footersOff)
	if !ok {
		return &Error{Offset: end,
			What: fmt.Sprintf("stream passed through opaque since offset %d (%s) does not end with EOF or EOF+VMDESCRIPTION",
				r.stats.OpaqueRestFrom, r.stats.OpaqueRestReason),
			Err: ErrTruncated}
	}
	r.stats.EOF = eof
	r.stats.VMDescriptionLen = vmdesc
	r.state = stDone
	return nil
}
