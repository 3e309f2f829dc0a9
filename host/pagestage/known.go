package pagestage

// Hooks for pages the destination already holds from an earlier migration
// or checkpoint. The page stage only carries the references; keeping,
// indexing and trusting such pages (content hashes, signed manifests) is the
// job of whatever implements these interfaces.

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
