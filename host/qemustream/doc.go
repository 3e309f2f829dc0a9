// Package qemustream reads QEMU's live-migration stream (the bytes a source
// QEMU writes to its migration socket) and splits it into items: the 4 KiB
// data of every RAM PAGE record, and opaque runs of everything else.
//
// It owns the knowledge of the stream's framing: the QEVM header and the
// configuration section, section headers and footers, commands (including the
// nested PACKAGED blob), EOF and the VMDESCRIPTION that follows it, and the
// record layout of the "ram" sections (MEM_SIZE, ZERO, PAGE, XBZRLE,
// COMPRESS_PAGE, MULTIFD_FLUSH, EOS and the CONTINUE rule). The authoritative
// sources are QEMU's migration/savevm.c, migration/vmstate.c and the
// ram_load_precopy loop of migration/ram.c.
//
// The correctness rule is that the bytes of every item, concatenated in the
// order Next returns them, are exactly the input stream. Page awareness is an
// optimisation for the page stage; everything the reader cannot delimit (device
// state, which carries no length) is passed through as opaque bytes.
//
// What it must not do: change, drop or reorder a byte; decode page contents,
// XBZRLE deltas or compressed pages; interpret device state; read the whole
// stream into memory (it works in one fixed buffer); panic or allocate without
// bound on any input. A malformed stream gives an *Error that names what was
// wrong and the stream offset where it was found.
package qemustream
