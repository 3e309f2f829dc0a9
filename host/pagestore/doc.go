// Package pagestore keeps a bounded, on-disk history of the memory pages a
// host sent or received in earlier sessions (migrations, `dwcp send`
// streams), so that a later session between the same two hosts can send a
// page the destination already holds as a 16-byte reference (the page
// stage's KNOWN record) instead of its 4 KiB.
//
// It owns the directory STATE_DIR/pages: one subdirectory per committed
// session, holding the peer's authenticated name and the session id (meta),
// the distinct pages seen in the session (data, 4096 bytes each, appended
// in the order they were first seen) and their xxh3-128 hashes in the same
// order (index). Both hosts of a session record the same pages in the same
// order under the same id, so each can tell the other which sessions it
// holds by id, page count and a digest of the index, and both sides agree
// on which pages a reference may name.
//
// A Recorder writes one session (buffered, off the caller's goroutine); the
// session becomes visible only when committed, after the stream was
// verified. A Reader (destination) resolves references with a pread and
// pins its sessions against eviction; a Set (source) is an in-memory set of
// hashes. The store evicts whole sessions, oldest first, to stay under its
// size bound, never one that a Reader pins.
//
// What it must not do: trust its files (a truncated or garbled meta, index
// or data file makes that session an error, which is then deleted, never a
// panic; a page read back is checked against its hash), hand one peer's
// pages to another peer's sessions, block the page stage's hot path on disk
// I/O beyond a few buffered chunks, or decide whether history is worth
// using (the caller does, per mode).
package pagestore
