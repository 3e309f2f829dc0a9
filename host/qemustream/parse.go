package qemustream

import (
	"fmt"
)

// step parses one unit in the current state. A step either fails or
// returns errFlush before changing anything, or consumes its unit whole.
func (r *Reader) step() error {
	switch r.state {
	case stHeader:
		return r.stepHeader()
	case stConfig:
		return r.stepConfig()
	case stSubsection:
		return r.stepSubsection()
	case stTop:
		return r.stepTop()
	case stRAM:
		return r.stepRAM()
	case stMemSize:
		return r.stepMemSize()
	case stFooter:
		return r.stepFooter()
	case stAfterEOF:
		return r.stepAfterEOF()
	case stAfterVMDesc:
		done, err := r.atEnd()
		if err != nil {
			return err
		}
		if !done {
			return r.corrupt(0, "data after VMDESCRIPTION")
		}
		r.state = stDone
		return nil
	}
	return fmt.Errorf("qemustream: internal error: step in state %d", r.state)
}

func (r *Reader) stepHeader() error {
	if err := r.want(8, "file header"); err != nil {
		return err
	}
	if m := r.be32(0); m != fileMagic {
		return r.corrupt(0, "bad magic %#08x (want %#08x \"QEVM\")", m, fileMagic)
	}
	switch v := r.be32(4); v {
	case fileVersion:
	case fileVersionCompat:
		return r.unsupported(4, "obsolete stream version 2")
	default:
		return r.corrupt(4, "unknown stream version %d (want 3)", v)
	}
	r.pos += 8
	r.state = stConfig
	return nil
}

func (r *Reader) stepConfig() error {
	if err := r.want(1, "record type"); err != nil {
		return err
	}
	if r.buf[r.pos] != recConfiguration {
		r.state = stTop
		return nil
	}
	if err := r.want(5, "configuration section"); err != nil {
		return err
	}
	n := r.be32(1)
	if n > maxMachineName {
		return r.corrupt(1, "machine type name length %d over limit %d", n, maxMachineName)
	}
	if err := r.want(5+int(n), "configuration section"); err != nil {
		return err
	}
	if !r.fits(5 + int(n)) {
		return errFlush
	}
	r.stats.MachineType = string(r.buf[r.pos+5 : r.pos+5+int(n)])
	r.pos += 5 + int(n)
	r.state = stSubsection
	return nil
}

// stepSubsection parses one optional subsection of the configuration. The
// loader in vmstate.c peeks for QEMU_VM_SUBSECTION the same way; 0x05 is
// never a top-level record type, so the peek is unambiguous.
func (r *Reader) stepSubsection() error {
	if err := r.want(1, "record type"); err != nil {
		return err
	}
	if r.buf[r.pos] != recSubsection {
		r.state = stTop
		if r.mappedRAM {
			r.goRest("mapped-ram capability: RAM is laid out at fixed offsets, not parsed")
		}
		return nil
	}
	if err := r.want(2, "configuration subsection"); err != nil {
		return err
	}
	nl := int(r.buf[r.pos+1])
	hdr := 2 + nl + 4
	if err := r.want(hdr, "configuration subsection"); err != nil {
		return err
	}
	name := r.buf[r.pos+2 : r.pos+2+nl]
	if v := r.be32(2 + nl); v != 1 {
		return r.unsupported(0, "configuration subsection %q version %d (want 1)", name, v)
	}
	switch string(name) {
	case "configuration/target-page-bits":
		if err := r.want(hdr+4, "target-page-bits subsection"); err != nil {
			return err
		}
		b := r.be32(hdr)
		if b < 10 || b > 16 {
			return r.unsupported(hdr, "target page bits %d outside [10, 16]", b)
		}
		ps := 1 << b
		if r.opts.PageSize != 0 && r.opts.PageSize != ps {
			return r.unsupported(hdr, "stream target page size %d disagrees with option PageSize %d", ps, r.opts.PageSize)
		}
		if !r.fits(hdr + 4) {
			return errFlush
		}
		r.setPageSize(ps)
		r.pos += hdr + 4
	case "configuration/capabilities":
		if err := r.want(hdr+4, "capabilities subsection"); err != nil {
			return err
		}
		count := r.be32(hdr)
		if count > maxCapabilities || len(r.stats.Capabilities)+int(count) > maxCapabilities {
			return r.corrupt(hdr, "capability count %d over limit %d", count, maxCapabilities)
		}
		n := hdr + 4
		for i := uint32(0); i < count; i++ {
			if err := r.want(n+1, "capabilities subsection"); err != nil {
				return err
			}
			n += 1 + int(r.buf[r.pos+n])
		}
		if err := r.want(n, "capabilities subsection"); err != nil {
			return err
		}
		if !r.fits(n) {
			return errFlush
		}
		for i, p := uint32(0), hdr+4; i < count; i++ {
			l := int(r.buf[r.pos+p])
			c := string(r.buf[r.pos+p+1 : r.pos+p+1+l])
			r.stats.Capabilities = append(r.stats.Capabilities, c)
			switch c {
			case "x-ignore-shared":
				if r.opts.IgnoreShared == CapAuto {
					r.ignoreShared = true
				}
			case "mapped-ram":
				r.mappedRAM = true
			}
			p += 1 + l
		}
		r.pos += n
	case "configuration/uuid":
		if err := r.want(hdr+16, "uuid subsection"); err != nil {
			return err
		}
		if !r.fits(hdr + 16) {
			return errFlush
		}
		r.pos += hdr + 16
	default:
		return r.unsupported(0, "unknown configuration subsection %q", name)
	}
	return nil
}

func (r *Reader) stepTop() error {
	if err := r.want(1, "record type"); err != nil {
		return err
	}
	switch t := r.buf[r.pos]; t {
	case recSectionStart, recSectionFull:
		return r.sectionStartFull(t)
	case recSectionPart, recSectionEnd:
		return r.sectionPartEnd(t)
	case recCommand:
		return r.command()
	case recEOF:
		if !r.fits(1) {
			return errFlush
		}
		r.pos++
		r.stats.EOF = true
		r.state = stAfterEOF
		return nil
	default:
		return r.corrupt(0, "unknown record type %#02x", t)
	}
}

func (r *Reader) sectionStartFull(t byte) error {
	what := "SECTION_START header"
	if t == recSectionFull {
		what = "SECTION_FULL header"
	}
	if err := r.want(6, what); err != nil {
		return err
	}
	id := r.be32(1)
	nl := int(r.buf[r.pos+5])
	if nl == 0 {
		return r.corrupt(5, "empty idstr in section %d", id)
	}
	n := 6 + nl + 8
	if err := r.want(n, what); err != nil {
		return err
	}
	idstr := r.buf[r.pos+6 : r.pos+6+nl]
	isRAM := string(idstr) == "ram"
	if _, known := r.sections[id]; !known && len(r.sections) >= maxSections {
		return r.corrupt(1, "more than %d sections", maxSections)
	}
	if isRAM {
		if v := r.be32(6 + nl + 4); v != ramSectionVersion {
			return r.unsupported(6+nl+4, "ram section version %d (want %d)", v, ramSectionVersion)
		}
	}
	if !r.fits(n) {
		return errFlush
	}
	r.sections[id] = isRAM
	if t == recSectionStart {
		r.stats.SectionStart++
	} else {
		r.stats.SectionFull++
	}
	if !isRAM {
		// Device state has no length field: from here on nothing can be
		// delimited, so the rest goes through unparsed. Since 8.0 an
		// early_setup device arrives as FULL before "ram" START, and
		// then the whole stream is passed through this way.
		name := string(idstr)
		r.pos += n
		r.goRest(fmt.Sprintf("payload of %s section %d %q", sectionKind(t), id, name))
		return nil
	}
	r.pos += n
	r.ramSection = id
	r.state = stRAM
	return nil
}

func sectionKind(t byte) string {
	switch t {
	case recSectionStart:
		return "START"
	case recSectionPart:
		return "PART"
	case recSectionEnd:
		return "END"
	}
	return "FULL"
}

func (r *Reader) sectionPartEnd(t byte) error {
	if err := r.want(5, "section header"); err != nil {
		return err
	}
	id := r.be32(1)
	isRAM, known := r.sections[id]
	if !known {
		return r.corrupt(1, "SECTION_%s for section id %d that was never started", sectionKind(t), id)
	}
	if !r.fits(5) {
		return errFlush
	}
	if t == recSectionPart {
		r.stats.SectionPart++
	} else {
		r.stats.SectionEnd++
	}
	r.pos += 5
	if !isRAM {
		r.goRest(fmt.Sprintf("payload of %s section %d", sectionKind(t), id))
		return nil
	}
	if t == recSectionPart {
		r.stats.RAMPasses++
	}
	r.ramSection = id
	r.state = stRAM
	return nil
}

func (r *Reader) command() error {
	if err := r.want(5, "command header"); err != nil {
		return err
	}
	cmd := Command(r.be16(1))
	l := int(r.be16(3))
	if cmd == 0 || cmd >= numCommands {
		return r.corrupt(1, "unknown command %d (length %d)", uint16(cmd), l)
	}
	if want := commandLen[cmd]; want >= 0 && l != want {
		return r.corrupt(3, "command %v with length %d (want %d)", cmd, l, want)
	}
	n := 5 + l // the whole command, when it is parsed in one piece
	switch cmd {
	case CmdPostcopyAdvise:
		if l != 0 && l != 16 {
			return r.corrupt(3, "command %v with length %d (want 0 or 16)", cmd, l)
		}
	case CmdRAMDiscard:
		// version 0, counted block name, a 0 byte, then be64 start/length
		// pairs (loadvm_postcopy_ram_handle_discard).
		if l < 4+16 {
			return r.corrupt(3, "command %v with length %d (want at least 20)", cmd, l)
		}
		if err := r.want(7, "RAM_DISCARD command"); err != nil {
			return err
		}
		nl := int(r.buf[r.pos+6])
		if v := r.buf[r.pos+5]; v != 0 {
			return r.corrupt(5, "RAM_DISCARD version %d (want 0)", v)
		}
		if nl == 0 || l < 3+nl+16 || (l-3-nl)%16 != 0 {
			return r.corrupt(3, "RAM_DISCARD length %d does not fit name length %d and 16-byte ranges", l, nl)
		}
		if err := r.want(8+nl, "RAM_DISCARD command"); err != nil {
			return err
		}
		if z := r.buf[r.pos+7+nl]; z != 0 {
			return r.corrupt(7+nl, "RAM_DISCARD name not followed by a 0 byte (got %#02x)", z)
		}
		n = 5 // the ranges go through as a skipped body
	case CmdRecvBitmap:
		if err := r.want(6, "RECV_BITMAP command"); err != nil {
			return err
		}
		if nl := int(r.buf[r.pos+5]); nl == 0 || l != nl+1 {
			return r.corrupt(3, "RECV_BITMAP length %d does not fit name length %d", l, nl)
		}
	case CmdPackaged:
		n = 9
	}
	if err := r.want(n, "command "+cmd.String()); err != nil {
		return err
	}
	if !r.fits(n) {
		return errFlush
	}
	r.stats.Commands[cmd]++
	switch cmd {
	case CmdPostcopyAdvise:
		if r.opts.PostcopyRAM == CapAuto {
			// savevm.c sends the 16-byte form exactly when postcopy-ram
			// is on, and the destination rejects any other pairing.
			r.postcopyRAM = l == 16
		}
	case CmdEnableCOLO:
		r.colo = true
	case CmdPackaged:
		// The blob is a nested stream (device state, LISTEN, RUN) whose
		// length is known, so it goes through opaque and parsing resumes
		// after it: postcopy RAM pages that follow keep page awareness.
		size := int64(r.be32(5))
		r.stats.PackagedBytes += size
		r.skip, r.skipWhat = size, "PACKAGED blob"
	case CmdRAMDiscard:
		r.skip, r.skipWhat = int64(l), "RAM_DISCARD payload"
	}
	r.pos += n
	return nil
}

func (r *Reader) stepAfterEOF() error {
	done, err := r.atEnd()
	if err != nil {
		return err
	}
	if done {
		// Postcopy and machines with suppress_vmdesc end here.
		r.state = stDone
		return nil
	}
	if r.colo {
		r.goRest("COLO checkpoints after EOF")
		return nil
	}
	if t := r.buf[r.pos]; t != recVMDescription {
		return r.corrupt(0, "record type %#02x after EOF (want VMDESCRIPTION)", t)
	}
	if err := r.want(5, "VMDESCRIPTION header"); err != nil {
		return err
	}
	l := r.be32(1)
	if l > r.maxVMDesc {
		return r.corrupt(1, "VMDESCRIPTION length %d over limit %d", l, r.maxVMDesc)
	}
	if !r.fits(5) {
		return errFlush
	}
	r.pos += 5
	r.stats.VMDescriptionLen = int64(l)
	r.skip, r.skipWhat = int64(l), "VMDESCRIPTION JSON"
	r.state = stAfterVMDesc
	return nil
}

func (r *Reader) stepFooter() error {
	if err := r.want(1, "section footer"); err != nil {
		return err
	}
	if r.buf[r.pos] != recFooter {
		// Footers are a machine-type property (send_section_footer):
		// the first section end tells whether this stream has them.
		if r.footers == footersOn {
			return r.corrupt(0, "missing footer of section %d (got %#02x)", r.ramSection, r.buf[r.pos])
		}
		r.footers = footersOff
		r.state = stTop
		return nil
	}
	if r.footers == footersOff {
		return r.corrupt(0, "section footer in a stream without footers")
	}
	if err := r.want(5, "section footer"); err != nil {
		return err
	}
	if id := r.be32(1); id != r.ramSection {
		return r.corrupt(1, "footer names section %d, want %d", id, r.ramSection)
	}
	if !r.fits(5) {
		return errFlush
	}
	r.footers = footersOn
	r.stats.Footers++
	r.pos += 5
	r.state = stTop
	return nil
}

// stepRAM parses one record of a "ram" section payload, as ram_load_precopy
// does: the flags without CONTINUE must be exactly one known kind.
func (r *Reader) stepRAM() error {
	if err := r.want(8, "RAM record header"); err != nil {
		return err
	}
	w := r.be64(0)
	flags := w & r.flagMask
	addr := w &^ r.flagMask
	switch kind := flags &^ flagContinue; kind {
	case flagMemSize:
		if !r.fits(8) {
			return errFlush
		}
		r.pos += 8
		r.stats.Records[RecMemSize]++
		r.memLeft = addr
		if addr != 0 {
			r.state = stMemSize
		}
		return nil
	case flagEOS:
		if !r.fits(8) {
			return errFlush
		}
		r.pos += 8
		r.stats.Records[RecEOS]++
		r.state = stFooter
		return nil
	case flagMultifdFlush:
		if !r.fits(8) {
			return errFlush
		}
		r.pos += 8
		r.stats.Records[RecMultifdFlush]++
		return nil
	case flagZero, flagPage, flagXBZRLE, flagCompressPage:
		return r.pageRecord(kind, flags&flagContinue != 0, addr)
	default:
		if flags&flagHook != 0 {
			return r.unsupported(0, "RAM_SAVE_FLAG_HOOK record (RDMA migration)")
		}
		return r.corrupt(0, "unknown RAM record flags %#x", flags)
	}
}

func (r *Reader) pageRecord(kind uint64, cont bool, addr uint64) error {
	hdr := 8
	bi := r.last
	if cont {
		if bi < 0 {
			return r.corrupt(0, "CONTINUE record with no previous RAM block")
		}
	} else {
		if err := r.want(9, "RAM record block name"); err != nil {
			return err
		}
		nl := int(r.buf[r.pos+8])
		if nl == 0 {
			return r.corrupt(8, "empty RAM block name")
		}
		hdr = 9 + nl
		if err := r.want(hdr, "RAM record block name"); err != nil {
			return err
		}
		bi = r.lookupBlock(r.buf[r.pos+9 : r.pos+hdr])
		if bi < 0 {
			return r.corrupt(8, "record for RAM block %q not named by MEM_SIZE", r.buf[r.pos+9:r.pos+hdr])
		}
	}
	b := &r.stats.Blocks[bi]
	if addr >= b.Length {
		return r.corrupt(0, "page offset %#x beyond RAM block %q length %#x", addr, b.Name, b.Length)
	}
	n := hdr // bytes of the record that go into the opaque run
	var rk RecordKind
	switch kind {
	case flagZero:
		// One fill byte; QEMU accepts any value and memsets the page.
		n, rk = hdr+1, RecZero
		if err := r.want(n, "ZERO record"); err != nil {
			return err
		}
	case flagPage:
		rk = RecPage
		if err := r.want(hdr+r.pageSize, "PAGE record"); err != nil {
			return err
		}
	case flagXBZRLE:
		rk = RecXBZRLE
		if err := r.want(hdr+3, "XBZRLE record"); err != nil {
			return err
		}
		if e := r.buf[r.pos+hdr]; e != xbzrleEncoding {
			return r.corrupt(hdr, "XBZRLE encoding byte %#02x (want %#02x)", e, xbzrleEncoding)
		}
		l := int(r.be16(hdr + 1))
		if l > r.pageSize {
			return r.corrupt(hdr+1, "XBZRLE length %d over page size %d", l, r.pageSize)
		}
		n = hdr + 3 + l
		if err := r.want(n, "XBZRLE record"); err != nil {
			return err
		}
	case flagCompressPage:
		rk = RecCompressPage
		if err := r.want(hdr+4, "COMPRESS_PAGE record"); err != nil {
			return err
		}
		l := r.be32(hdr)
		if bound := compressBound(r.pageSize); l > uint32(bound) {
			return r.corrupt(hdr, "COMPRESS_PAGE length %d over compressBound %d", l, bound)
		}
		n = hdr + 4 + int(l)
		if err := r.want(n, "COMPRESS_PAGE record"); err != nil {
			return err
		}
	}
	if !r.fits(n) {
		return errFlush
	}
	r.pos += n
	r.last = bi
	r.stats.Records[rk]++
	if rk == RecPage {
		r.pagePending = true
		r.pageBlock = b.Name
		r.pageAddr = addr
	}
	return nil
}

// lookupBlock finds a block by name without allocating: the string
// conversion in the comparison is not materialised.
func (r *Reader) lookupBlock(name []byte) int {
	for i := range r.stats.Blocks {
		if r.stats.Blocks[i].Name == string(name) {
			return i
		}
	}
	return -1
}

// stepMemSize parses one entry of the MEM_SIZE preamble: counted idstr, be64
// used_length, [be64 page size], [be64 GPA]. Entries continue until their
// lengths add up to the MEM_SIZE total.
func (r *Reader) stepMemSize() error {
	if err := r.want(1, "MEM_SIZE entry"); err != nil {
		return err
	}
	nl := int(r.buf[r.pos])
	if nl == 0 {
		return r.corrupt(0, "empty RAM block name in MEM_SIZE")
	}
	base := 1 + nl + 8
	if err := r.want(base, "MEM_SIZE entry"); err != nil {
		return err
	}
	name := r.buf[r.pos+1 : r.pos+1+nl]
	length := r.be64(1 + nl)
	if length > r.memLeft {
		return r.corrupt(1+nl, "RAM block %q length %#x exceeds the %#x left of MEM_SIZE", name, length, r.memLeft)
	}
	left := r.memLeft - length
	huge, err := r.hasPageSizeField(name, base, left)
	if err != nil {
		return err
	}
	n := base
	if huge {
		n += 8
	}
	if r.ignoreShared {
		n += 8
	}
	if err := r.want(n, "MEM_SIZE entry"); err != nil {
		return err
	}
	var ps, gpa uint64
	if huge {
		ps = r.be64(base)
		if ps&(ps-1) != 0 || ps < uint64(r.pageSize) || ps > maxHugePageSize {
			return r.corrupt(base, "RAM block %q page size %#x is not a power of two in [%d, 2^40]", name, ps, r.pageSize)
		}
	}
	if r.ignoreShared {
		gpa = r.be64(n - 8)
	}
	bi := r.lookupBlock(name)
	if bi < 0 && len(r.stats.Blocks) >= maxBlocks {
		return r.corrupt(0, "more than %d RAM blocks", maxBlocks)
	}
	if !r.fits(n) {
		return errFlush
	}
	if bi < 0 {
		r.stats.Blocks = append(r.stats.Blocks, Block{Name: string(name)})
		bi = len(r.stats.Blocks) - 1
	}
	r.stats.Blocks[bi].Length = length
	r.stats.Blocks[bi].PageSize = ps
	r.stats.Blocks[bi].GPA = gpa
	r.memLeft = left
	r.pos += n
	if left == 0 {
		r.state = stRAM
	}
	return nil
}

// hasPageSizeField says whether a MEM_SIZE entry carries the hugepage page
// size. QEMU writes it when postcopy-ram is on and the block's page size
// differs from the host page size, which the stream does not state; without
// an explicit HugePageBlocks list the bytes decide (see Options).
func (r *Reader) hasPageSizeField(name []byte, at int, left uint64) (bool, error) {
	if !r.postcopyRAM {
		return false, nil
	}
	if r.opts.HugePageBlocks != nil {
		for _, h := range r.opts.HugePageBlocks {
			if h == string(name) {
				return true, nil
			}
		}
		return false, nil
	}
	if err := r.want(at+8, "MEM_SIZE entry"); err != nil {
		return false, err
	}
	v := r.be64(at)
	if v == 0 || v&(v-1) != 0 || v <= uint64(r.pageSize) || v > maxHugePageSize {
		return false, nil
	}
	if !r.ignoreShared {
		// Without a GPA the alternative to a page size is a block name
		// (first byte non-zero) or a record header (flag bits set).
		return true, nil
	}
	// With a GPA, v could be that address. Look at what follows it if it
	// is: a block name starts with a non-zero byte and a record header has
	// flag bits set, while under the page-size reading those bytes are a
	// page-aligned address below 2^56.
	if err := r.want(at+16, "MEM_SIZE entry"); err != nil {
		return false, err
	}
	next := r.be64(at + 8)
	if left > 0 {
		return next>>56 == 0, nil
	}
	return next&r.flagMask == 0, nil
}
