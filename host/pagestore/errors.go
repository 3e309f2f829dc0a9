package pagestore

import "errors"

// Sentinel errors callers branch on.
var (
	// ErrLocked: another process has the history directory open.
	ErrLocked = errors.New("page history in use by another process")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("page history closed")
	// ErrInvalid: a peer name or session id that cannot be recorded.
	ErrInvalid = errors.New("invalid page history argument")
	// ErrExists: a session with this peer and id is already held or being
	// recorded.
	ErrExists = errors.New("page history session exists")
	// ErrFull: the session does not fit under the size bound even after
	// evicting every session that is not in use.
	ErrFull = errors.New("page history full")
	// ErrCorrupt: a session's files are truncated or garbled; the session
	// is dropped and deleted.
	ErrCorrupt = errors.New("page history session corrupt")
	// ErrUnknownPage: a reference to a page no loaded session holds.
	ErrUnknownPage = errors.New("page not in the page history")
)
