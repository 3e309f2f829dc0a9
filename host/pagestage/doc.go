// Package pagestage is DWCP's page stage: it turns the items of a QEMU
// migration stream (opaque runs and 4 KiB RAM pages, as host/qemustream splits
// them) into batches in which zero pages, pages already sent in this session,
// and lightly changed re-sends of a page have shrunk to small records, and it
// turns those batches back into the exact stream bytes on the destination.
//
// It owns the batch format (docs/pagestage.md describes it byte by byte), the
// encoder's choice of record for each page, and the state both ends keep in
// step: the block table, a ring of recently sent page contents found through
// an xxh3-128 index, and a set-associative cache of the last content sent for
// each page address. That state changes only on what a record says, never on
// what an encoder merely looked at, so the decoder mirrors it exactly and
// every reference resolves; a batch checksum (xxh3-64 of the decoded bytes)
// catches any desync at once.
//
// Each batch has a compressible section (records and page data a codec should
// see) and a stored section (pages that looked incompressible, which must not
// cost a slow codec any time). Compressing, framing and carrying the sections
// is the caller's job.
//
// What it must not do: parse the QEMU stream (page items arrive already split),
// compress, reorder or drop bytes, start goroutines, or panic or allocate
// without bound on a malformed batch: a bad batch is an error wrapping one of
// the sentinel errors below, and the decoder never returns bytes it has not
// verified.
package pagestage
