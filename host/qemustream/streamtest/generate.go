package streamtest

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// Content is a kind of page content, chosen to exercise a page stage the
// way real guest memory does.
type Content uint8

// Page contents.
const (
	ContentZero      Content = iota // all zero: QEMU sends a ZERO record
	ContentRandom                   // incompressible
	ContentRepeating                // a short pattern repeated
	ContentSparse                   // mostly zero, a few bytes set
	ContentText                     // words and newlines
	NumContents
)

func (c Content) String() string {
	switch c {
	case ContentZero:
		return "zero"
	case ContentRandom:
		return "random"
	case ContentRepeating:
		return "repeating"
	case ContentSparse:
		return "sparse"
	case ContentText:
		return "text"
	}
	return fmt.Sprintf("Content(%d)", uint8(c))
}

var words = strings.Fields(`the of and to in is that for it as with was on be by this are from at or
an have not but which they were all one their there been has more when will would who so no
migration memory page guest host stream qemu kernel module buffer section device state
#include <stdio.h> int main(void) { return 0; } def __init__(self): import os sys`)

// FillPage fills dst with content of kind c drawn from rng.
func FillPage(dst []byte, c Content, rng *rand.Rand) {
	switch c {
	case ContentZero:
		clear(dst)
	case ContentRandom:
		for i := 0; i+8 <= len(dst); i += 8 {
			v := rng.Uint64()
			for k := 0; k < 8; k++ {
				dst[i+k] = byte(v >> (8 * k))
			}
		}
	case ContentRepeating:
		pat := make([]byte, 1+rng.IntN(64))
		for i := range pat {
			pat[i] = byte(rng.IntN(256))
		}
		for i := range dst {
			dst[i] = pat[i%len(pat)]
		}
	case ContentSparse:
		clear(dst)
		for n := 1 + rng.IntN(len(dst)/64); n > 0; n-- {
			dst[rng.IntN(len(dst))] = byte(1 + rng.IntN(255))
		}
	case ContentText:
		i := 0
		for i < len(dst) {
			w := words[rng.IntN(len(words))]
			i += copy(dst[i:], w)
			if i < len(dst) {
				sep := byte(' ')
				if rng.IntN(12) == 0 {
					sep = '\n'
				}
				dst[i] = sep
				i++
			}
		}
	}
}

// DefaultBlocks are small RAM blocks named like those of a q35 guest.
func DefaultBlocks() []Block {
	return []Block{
		{Name: "pc.ram", Length: 1 << 20, GPA: 0},
		{Name: "/rom@etc/acpi/tables", Length: 128 << 10, GPA: 0xfffe0000},
		{Name: "0000:00:01.0/vga.vram", Length: 256 << 10, GPA: 0xfd000000},
	}
}

// Config describes a whole synthetic precopy migration for Generate.
type Config struct {
	Options
	Seed uint64
	// Blocks default to DefaultBlocks.
	Blocks []Block
	// PagesPerPart is the number of pages per SECTION_PART in the first
	// full pass; 0 means 64.
	PagesPerPart int
	// DirtyPasses is the number of SECTION_PARTs after the first pass that
	// re-send dirtied pages; DirtyPages is how many each re-sends.
	DirtyPasses, DirtyPages int
	// FinalDirty is the number of pages re-sent in SECTION_END.
	FinalDirty int
	// XBZRLE re-sends dirtied pages as XBZRLE deltas when they are small
	// enough, as the xbzrle capability does.
	XBZRLE bool
	// Compress sends non-zero pages of the first pass as COMPRESS_PAGE.
	Compress bool
	// Multifd writes MULTIFD_FLUSH records (8.1+ with multifd).
	Multifd bool
	// ReturnPath writes OPEN_RETURN_PATH and PING(1) after the header.
	ReturnPath bool
	// Devices is the number of FULL device sections after RAM END.
	Devices int
	// NoVMDescription ends the stream at EOF.
	NoVMDescription bool
	// Mix weights the page contents, indexed by Content; all zero means an
	// even mix.
	Mix [NumContents]int
}

// Generate writes a complete migration stream: header, configuration,
// optional return path, "ram" START with MEM_SIZE, a first full pass over
// every page split into PARTs, dirty passes, END, device FULL sections, EOF
// and VMDESCRIPTION.
func Generate(cfg Config) *Builder {
	b := New(cfg.Options)
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x9e3779b97f4a7c15))
	blocks := cfg.Blocks
	if blocks == nil {
		blocks = DefaultBlocks()
	}
	perPart := cfg.PagesPerPart
	if perPart <= 0 {
		perPart = 64
	}
	ps := b.PageSize()
	mix := cfg.Mix
	total := 0
	for _, w := range mix {
		total += w
	}
	if total == 0 {
		for i := range mix {
			mix[i] = 1
		}
		total = len(mix)
	}
	pick := func() Content {
		n := rng.IntN(total)
		for c, w := range mix {
			if n < w {
				return Content(c)
			}
			n -= w
		}
		return ContentRandom
	}

	// The last content sent of every page, for XBZRLE deltas.
	image := map[string][]byte{}
	for _, bl := range blocks {
		image[bl.Name] = make([]byte, bl.Length)
	}

	b.Header()
	if cfg.ReturnPath {
		b.OpenReturnPath()
		b.Ping(1)
	}
	if cfg.PostcopyRAM {
		b.PostcopyAdvise(uint64(ps))
	}
	ram := b.SectionStart("ram", 0, 4)
	b.MemSize(blocks)
	if cfg.Multifd {
		b.MultifdFlush()
	}
	b.EOS()
	b.Footer(ram)

	page := make([]byte, ps)
	send := func(block string, addr uint64, first bool) {
		img := image[block][addr : addr+uint64(ps)]
		c := pick()
		if !first && c != ContentZero && rng.IntN(2) == 0 {
			// A typical re-dirtied page changes in a few places.
			copy(page, img)
			for n := 1 + rng.IntN(16); n > 0; n-- {
				page[rng.IntN(ps)] ^= byte(1 + rng.IntN(255))
			}
		} else {
			FillPage(page, c, rng)
		}
		switch {
		case isZero(page):
			b.Zero(block, addr, 0)
		case cfg.XBZRLE && !first:
			if enc := EncodeXBZRLE(img, page, ps-ps/8); enc != nil {
				b.XBZRLE(block, addr, enc)
			} else {
				b.Page(block, addr, page)
			}
		case cfg.Compress && first && len(Compress(page)) < ps:
			// Like QEMU, send an incompressible page as it is.
			b.Compressed(block, addr, Compress(page))
		default:
			b.Page(block, addr, page)
		}
		copy(img, page)
	}

	inPart := 0
	for _, bl := range blocks {
		for addr := uint64(0); addr < bl.Length; addr += uint64(ps) {
			if inPart == 0 {
				b.SectionPart(ram)
			}
			send(bl.Name, addr, true)
			inPart++
			if inPart == perPart {
				b.EOS()
				b.Footer(ram)
				inPart = 0
			}
		}
	}
	if inPart > 0 {
		b.EOS()
		b.Footer(ram)
	}
	dirty := func(n int) {
		for ; n > 0; n-- {
			bl := blocks[rng.IntN(len(blocks))]
			addr := uint64(rng.IntN(int(bl.Length)/ps)) * uint64(ps)
			send(bl.Name, addr, false)
		}
		if cfg.Multifd {
			b.MultifdFlush()
		}
		b.EOS()
		b.Footer(ram)
	}
	for p := 0; p < cfg.DirtyPasses; p++ {
		b.SectionPart(ram)
		dirty(cfg.DirtyPages)
	}
	b.SectionEnd(ram)
	dirty(cfg.FinalDirty)

	var desc strings.Builder
	fmt.Fprintf(&desc, `{"page_size": %d, "devices": [`, ps)
	for d := 0; d < cfg.Devices; d++ {
		name := fmt.Sprintf("dev%d", d)
		payload := make([]byte, 16+rng.IntN(512))
		for i := range payload {
			// Device state: registers, mostly small numbers and zeros.
			if rng.IntN(3) == 0 {
				payload[i] = byte(rng.IntN(256))
			}
		}
		b.Device(name, 0, uint32(1+d%3), payload)
		if d > 0 {
			desc.WriteString(", ")
		}
		fmt.Fprintf(&desc, `{"name": %q, "instance_id": 0, "size": %d}`, name, len(payload))
	}
	desc.WriteString("]}")
	b.EOF()
	if !cfg.NoVMDescription {
		b.VMDescription([]byte(desc.String()))
	}
	return b
}

func isZero(p []byte) bool {
	for _, v := range p {
		if v != 0 {
			return false
		}
	}
	return true
}
