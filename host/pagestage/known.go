package pagestage

// Hooks for pages the destination already holds from an earlier migration
// or checkpoint. The page stage only carries the references; keeping,
// indexing and trusting such pages (content hashes, signed manifests) is the
// job of whatever implements these interfaces (host/pagestore keeps a
// per-host history of migrated pages behind them).

// KnownSource tells the encoder which page contents the destination holds.
// It is called on the hot path, once per page that is neither zero nor in
// the dedup ring, and must not block.
type KnownSource interface {
	Known(h PageHash) bool
}

// KnownStore gives the decoder a page it holds. The decoder checks the
// content against h, so a store that returns the wrong page is an error,
// not corrupt guest memory.
type KnownStore interface {
	// KnownPage copies the page with content hash h into dst (PageSize
	// bytes) or returns an error.
	KnownPage(h PageHash, dst []byte) error
}

// PageObserver sees the content of the pages a session carries, so that
// both hosts can keep them for later sessions. The encoder calls it for
// every page it adds that does not travel as a zero run or a dedup
// reference, with the xxh3-128 it computes anyway; the decoder calls it for
// every page it rebuilds from a FULL, STORED, DELTA or KNOWN record. Zero
// runs and dedup references are left out on both ends: a zero page is never
// worth a reference, and a duplicate's content was observed when it entered
// the ring. Both ends therefore observe the same pages in the same order.
//
// It runs on the hot path. page is valid only during the call (it must be
// copied to be kept), and the call should not block for long. The decoder
// observes pages before the batch checksum and the stream digest are
// checked: an observer must keep what it saw provisional until the stream
// is verified.
type PageObserver interface {
	ObservePage(h PageHash, page []byte)
}
