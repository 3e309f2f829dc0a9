// Package streamtest writes synthetic QEMU migration streams for tests: the
// header and configuration, commands, "ram" sections with every record kind,
// device sections, EOF and VMDESCRIPTION, laid out byte for byte as QEMU's
// migration/savevm.c and migration/ram.c write them.
//
// It is written independently of package qemustream (it shares no constants
// or code with it), so a test that reads a Builder's stream with a
// qemustream.Reader checks two encodings of the format against each other.
// A Builder also logs every RAM record it wrote, so tests can compare what a
// reader found with what was written.
//
// It owns nothing at run time and must not be imported by non-test code.
package streamtest

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"fmt"
)

// Stream constants, transcribed from QEMU's savevm.c and ram.c.
const (
	vmFileMagic   = 0x5145564d
	vmFileVersion = 3

	secEOF      = 0x00
	secStart    = 0x01
	secPart     = 0x02
	secEnd      = 0x03
	secFull     = 0x04
	secSub      = 0x05
	secVMDesc   = 0x06
	secConfig   = 0x07
	secCommand  = 0x08
	secFooter   = 0x7e
	ramZero     = 0x02
	ramMemSize  = 0x04
	ramPage     = 0x08
	ramEOS      = 0x10
	ramContinue = 0x20
	ramXBZRLE   = 0x40
	ramCompress = 0x100
	ramMFFlush  = 0x200
)

// QEMU_VM_COMMAND sub-commands.
const (
	CmdOpenReturnPath  = 1
	CmdPing            = 2
	CmdPostcopyAdvise  = 3
	CmdPostcopyListen  = 4
	CmdPostcopyRun     = 5
	CmdRAMDiscard      = 6
	CmdPackaged        = 7
	CmdEnableCOLO      = 8
	CmdPostcopyResume  = 9
	CmdRecvBitmap      = 10
	CmdSwitchoverStart = 11
)

// Options shape the bytes a Builder writes.
type Options struct {
	// PageSize is the target page size; 0 means 4096.
	PageSize int
	// Machine is the machine type in the configuration section; "" means
	// "pc-q35-7.2".
	Machine string
	// NoConfiguration leaves out the configuration section, as machine
	// types without send_configuration do.
	NoConfiguration bool
	// PageBitsSubsection writes configuration/target-page-bits.
	PageBitsSubsection bool
	// Capabilities, when non-empty, are written as
	// configuration/capabilities.
	Capabilities []string
	// UUID, when set, is written as configuration/uuid.
	UUID *[16]byte
	// NoFooters leaves out section footers (send_section_footer off).
	NoFooters bool
	// PostcopyRAM makes MEM_SIZE entries of blocks with a PageSize carry
	// it, and PostcopyAdvise write its 16-byte form.
	PostcopyRAM bool
	// IgnoreShared makes every MEM_SIZE entry carry the block's GPA.
	IgnoreShared bool
	// NoContinue names the block in every page record instead of using
	// CONTINUE for a repeat of the previous block.
	NoContinue bool
	// NoLog turns off the record log (for very large streams).
	NoLog bool
}

// Block describes a RAM block for a MEM_SIZE preamble.
type Block struct {
	Name   string
	Length uint64
	// PageSize is the block's page size if it differs from the host page
	// size (hugepages); written only with Options.PostcopyRAM.
	PageSize uint64
	// GPA is written only with Options.IgnoreShared.
	GPA uint64
}

// RecordKind is the kind of a logged RAM page record.
type RecordKind uint8

// Logged record kinds.
const (
	Zero RecordKind = iota
	Page
	XBZRLE
	Compressed
)

func (k RecordKind) String() string {
	switch k {
	case Zero:
		return "zero"
	case Page:
		return "page"
	case XBZRLE:
		return "xbzrle"
	case Compressed:
		return "compressed"
	}
	return fmt.Sprintf("RecordKind(%d)", uint8(k))
}

// Record is one logged RAM page record.
type Record struct {
	Kind     RecordKind
	Block    string
	Addr     uint64
	Continue bool  // written with the CONTINUE flag
	Offset   int64 // stream offset of the record's header word
	// DataOffset is the stream offset of a Page record's page data.
	DataOffset int64
}

// Counts are totals of what a Builder wrote.
type Counts struct {
	Start, Part, End, Full, Footers uint64
	RAMParts                        uint64
	MemSize, EOS, MultifdFlush      uint64
	Zero, Page, XBZRLE, Compressed  uint64
	Commands                        [12]uint64
	EOF                             bool
	VMDescriptionLen                int64 // -1 when none was written
}

// Builder appends a migration stream to an in-memory buffer.
type Builder struct {
	opts     Options
	ps       int
	buf      []byte
	last     string
	haveLast bool
	nextID   uint32
	ramIDs   map[uint32]bool

	// Records logs the RAM page records written, unless Options.NoLog.
	Records []Record
	// Counts totals what was written.
	Counts Counts
}

// New returns an empty Builder.
func New(opts Options) *Builder {
	ps := opts.PageSize
	if ps == 0 {
		ps = 4096
	}
	if opts.Machine == "" {
		opts.Machine = "pc-q35-7.2"
	}
	return &Builder{opts: opts, ps: ps, nextID: 2, ramIDs: map[uint32]bool{},
		Counts: Counts{VMDescriptionLen: -1}}
}

// PageSize is the target page size the Builder writes pages of.
func (b *Builder) PageSize() int { return b.ps }

// Bytes returns the stream written so far. It aliases the Builder's buffer.
func (b *Builder) Bytes() []byte { return b.buf }

// Len is the number of bytes written so far: the offset of the next byte.
func (b *Builder) Len() int64 { return int64(len(b.buf)) }

// Raw appends bytes as they are, for streams the builder cannot express
// (corruption tests).
func (b *Builder) Raw(p []byte) { b.buf = append(b.buf, p...) }

// ResetContinue forgets the previous block, as QEMU's source does when it
// starts postcopy, so the next page record names its block.
func (b *Builder) ResetContinue() { b.haveLast = false }

func (b *Builder) u8(v byte)     { b.buf = append(b.buf, v) }
func (b *Builder) be16(v uint16) { b.buf = binary.BigEndian.AppendUint16(b.buf, v) }
func (b *Builder) be32(v uint32) { b.buf = binary.BigEndian.AppendUint32(b.buf, v) }
func (b *Builder) be64(v uint64) { b.buf = binary.BigEndian.AppendUint64(b.buf, v) }
func (b *Builder) counted(s string) {
	if len(s) == 0 || len(s) > 255 {
		panic(fmt.Sprintf("streamtest: counted string of length %d", len(s)))
	}
	b.u8(byte(len(s)))
	b.buf = append(b.buf, s...)
}

// Header writes the file header and, unless Options.NoConfiguration, the
// configuration section with the subsections the options ask for.
func (b *Builder) Header() {
	b.be32(vmFileMagic)
	b.be32(vmFileVersion)
	if b.opts.NoConfiguration {
		return
	}
	b.u8(secConfig)
	b.be32(uint32(len(b.opts.Machine)))
	b.buf = append(b.buf, b.opts.Machine...)
	if b.opts.PageBitsSubsection {
		b.subsection("configuration/target-page-bits")
		bits := 0
		for 1<<bits < b.ps {
			bits++
		}
		b.be32(uint32(bits))
	}
	if len(b.opts.Capabilities) > 0 {
		b.subsection("configuration/capabilities")
		b.be32(uint32(len(b.opts.Capabilities)))
		for _, c := range b.opts.Capabilities {
			b.counted(c)
		}
	}
	if b.opts.UUID != nil {
		b.subsection("configuration/uuid")
		b.buf = append(b.buf, b.opts.UUID[:]...)
	}
}

func (b *Builder) subsection(name string) {
	b.u8(secSub)
	b.counted(name)
	b.be32(1)
}

// Command writes a QEMU_VM_COMMAND record.
func (b *Builder) Command(cmd uint16, payload []byte) {
	b.u8(secCommand)
	b.be16(cmd)
	b.be16(uint16(len(payload)))
	b.buf = append(b.buf, payload...)
	if int(cmd) < len(b.Counts.Commands) {
		b.Counts.Commands[cmd]++
	}
}

// OpenReturnPath writes the OPEN_RETURN_PATH command.
func (b *Builder) OpenReturnPath() { b.Command(CmdOpenReturnPath, nil) }

// Ping writes a PING command.
func (b *Builder) Ping(v uint32) { b.Command(CmdPing, binary.BigEndian.AppendUint32(nil, v)) }

// PostcopyAdvise writes POSTCOPY_ADVISE: 16 bytes (host page size summary,
// target page size) with Options.PostcopyRAM, else empty.
func (b *Builder) PostcopyAdvise(pageSummary uint64) {
	if !b.opts.PostcopyRAM {
		b.Command(CmdPostcopyAdvise, nil)
		return
	}
	p := binary.BigEndian.AppendUint64(nil, pageSummary)
	p = binary.BigEndian.AppendUint64(p, uint64(b.ps))
	b.Command(CmdPostcopyAdvise, p)
}

// RAMDiscard writes a POSTCOPY_RAM_DISCARD command for block.
func (b *Builder) RAMDiscard(block string, ranges [][2]uint64) {
	p := []byte{0, byte(len(block))}
	p = append(p, block...)
	p = append(p, 0)
	for _, r := range ranges {
		p = binary.BigEndian.AppendUint64(p, r[0])
		p = binary.BigEndian.AppendUint64(p, r[1])
	}
	b.Command(CmdRAMDiscard, p)
}

// RecvBitmap writes a RECV_BITMAP command.
func (b *Builder) RecvBitmap(block string) {
	b.Command(CmdRecvBitmap, append([]byte{byte(len(block))}, block...))
}

// Packaged writes a PACKAGED command followed by the nested stream.
func (b *Builder) Packaged(nested []byte) {
	b.Command(CmdPackaged, binary.BigEndian.AppendUint32(nil, uint32(len(nested))))
	b.buf = append(b.buf, nested...)
}

func (b *Builder) sectionHeader(kind byte, id uint32, idstr string, instance, version uint32) {
	b.u8(kind)
	b.be32(id)
	if kind == secStart || kind == secFull {
		b.counted(idstr)
		b.be32(instance)
		b.be32(version)
	}
}

// SectionStart writes a SECTION_START header and returns its new id.
func (b *Builder) SectionStart(idstr string, instance, version uint32) uint32 {
	id := b.nextID
	b.nextID++
	b.ramIDs[id] = idstr == "ram"
	b.sectionHeader(secStart, id, idstr, instance, version)
	b.Counts.Start++
	return id
}

// SectionFull writes a SECTION_FULL header and returns its new id.
func (b *Builder) SectionFull(idstr string, instance, version uint32) uint32 {
	id := b.nextID
	b.nextID++
	b.ramIDs[id] = idstr == "ram"
	b.sectionHeader(secFull, id, idstr, instance, version)
	b.Counts.Full++
	return id
}

// SectionPart writes a SECTION_PART header.
func (b *Builder) SectionPart(id uint32) {
	b.sectionHeader(secPart, id, "", 0, 0)
	b.Counts.Part++
	if b.ramIDs[id] {
		b.Counts.RAMParts++
	}
}

// SectionEnd writes a SECTION_END header.
func (b *Builder) SectionEnd(id uint32) {
	b.sectionHeader(secEnd, id, "", 0, 0)
	b.Counts.End++
}

// Footer writes a section footer unless Options.NoFooters.
func (b *Builder) Footer(id uint32) {
	if b.opts.NoFooters {
		return
	}
	b.u8(secFooter)
	b.be32(id)
	b.Counts.Footers++
}

// MemSize writes the MEM_SIZE preamble for blocks.
func (b *Builder) MemSize(blocks []Block) {
	var total uint64
	for _, bl := range blocks {
		total += bl.Length
	}
	b.be64(total | ramMemSize)
	for _, bl := range blocks {
		b.counted(bl.Name)
		b.be64(bl.Length)
		if b.opts.PostcopyRAM && bl.PageSize != 0 {
			b.be64(bl.PageSize)
		}
		if b.opts.IgnoreShared {
			b.be64(bl.GPA)
		}
	}
	b.Counts.MemSize++
}

// EOS writes the end-of-section RAM record.
func (b *Builder) EOS() {
	b.be64(ramEOS)
	b.Counts.EOS++
}

// MultifdFlush writes a MULTIFD_FLUSH RAM record.
func (b *Builder) MultifdFlush() {
	b.be64(ramMFFlush)
	b.Counts.MultifdFlush++
}

// RAMStart writes the whole setup section of "ram": START, MEM_SIZE, EOS
// and footer. It returns the section id.
func (b *Builder) RAMStart(blocks []Block) uint32 {
	id := b.SectionStart("ram", 0, 4)
	b.MemSize(blocks)
	b.EOS()
	b.Footer(id)
	return id
}

// pageHeader writes a page record's header word and, unless it can use
// CONTINUE, the block name.
func (b *Builder) pageHeader(kind RecordKind, flag uint64, block string, addr uint64) {
	if addr%uint64(b.ps) != 0 {
		panic(fmt.Sprintf("streamtest: page address %#x not aligned to %d", addr, b.ps))
	}
	cont := b.haveLast && b.last == block && !b.opts.NoContinue
	rec := Record{Kind: kind, Block: block, Addr: addr, Continue: cont, Offset: b.Len()}
	if cont {
		flag |= ramContinue
	}
	b.be64(addr | flag)
	if !cont {
		b.counted(block)
	}
	b.last, b.haveLast = block, true
	if kind == Page {
		rec.DataOffset = b.Len()
	}
	if !b.opts.NoLog {
		b.Records = append(b.Records, rec)
	}
}

// Zero writes a ZERO record (a page filled with fill).
func (b *Builder) Zero(block string, addr uint64, fill byte) {
	b.pageHeader(Zero, ramZero, block, addr)
	b.u8(fill)
	b.Counts.Zero++
}

// Page writes a PAGE record with data, which must be one page long.
func (b *Builder) Page(block string, addr uint64, data []byte) {
	if len(data) != b.ps {
		panic(fmt.Sprintf("streamtest: page of %d bytes, want %d", len(data), b.ps))
	}
	b.pageHeader(Page, ramPage, block, addr)
	b.buf = append(b.buf, data...)
	b.Counts.Page++
}

// XBZRLE writes an XBZRLE record with an encoded delta (see EncodeXBZRLE).
func (b *Builder) XBZRLE(block string, addr uint64, encoded []byte) {
	b.pageHeader(XBZRLE, ramXBZRLE, block, addr)
	b.u8(1)
	b.be16(uint16(len(encoded)))
	b.buf = append(b.buf, encoded...)
	b.Counts.XBZRLE++
}

// Compressed writes a COMPRESS_PAGE record with zlib data.
func (b *Builder) Compressed(block string, addr uint64, zdata []byte) {
	b.pageHeader(Compressed, ramCompress, block, addr)
	b.be32(uint32(len(zdata)))
	b.buf = append(b.buf, zdata...)
	b.Counts.Compressed++
}

// Device writes a FULL section of opaque device state and its footer, and
// returns the section id.
func (b *Builder) Device(idstr string, instance, version uint32, payload []byte) uint32 {
	id := b.SectionFull(idstr, instance, version)
	b.buf = append(b.buf, payload...)
	b.Footer(id)
	return id
}

// EOF writes the QEMU_VM_EOF marker.
func (b *Builder) EOF() {
	b.u8(secEOF)
	b.Counts.EOF = true
}

// VMDescription writes the VMDESCRIPTION record that follows EOF.
func (b *Builder) VMDescription(json []byte) {
	b.u8(secVMDesc)
	b.be32(uint32(len(json)))
	b.buf = append(b.buf, json...)
	b.Counts.VMDescriptionLen = int64(len(json))
}

// Compress zlib-compresses a page at level 1, as QEMU's compress threads do.
func Compress(page []byte) []byte {
	var out bytes.Buffer
	w, err := zlib.NewWriterLevel(&out, 1)
	if err != nil {
		panic(err)
	}
	if _, err := w.Write(page); err != nil {
		panic(err)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// EncodeXBZRLE encodes cur against prev in XBZRLE form: alternating ULEB128
// lengths of an unchanged run and of a changed run, each changed run
// followed by its bytes from cur; a trailing unchanged run is left out. It
// returns nil if the encoding would be longer than limit bytes, the case in
// which QEMU sends a full page instead.
func EncodeXBZRLE(prev, cur []byte, limit int) []byte {
	var out []byte
	i := 0
	for i < len(cur) {
		z := i
		for z < len(cur) && prev[z] == cur[z] {
			z++
		}
		if z == len(cur) {
			break
		}
		out = appendULEB(out, uint64(z-i))
		n := z
		for n < len(cur) && prev[n] != cur[n] {
			n++
		}
		out = appendULEB(out, uint64(n-z))
		out = append(out, cur[z:n]...)
		if len(out) > limit {
			return nil
		}
		i = n
	}
	return out
}

func appendULEB(p []byte, v uint64) []byte {
	for v >= 0x80 {
		p = append(p, byte(v)|0x80)
		v >>= 7
	}
	return append(p, byte(v))
}
