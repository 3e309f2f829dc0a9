package pagestore

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/zeebo/xxh3"
)

// A page's location packs its session (high bits) and page number.
const (
	locPageBits = 40
	locPageMask = 1<<locPageBits - 1
	maxSessions = 1 << (64 - locPageBits)
)

// Reader resolves known-page references of a destination (it implements
// pagestage.KnownStore) from the sessions held with one peer. It pins them
// until Close, so eviction cannot take them away mid-stream. KnownPage may
// be called concurrently; Close only after the last call.
type Reader struct {
	st       *Store
	sessions []*session
	files    []*os.File
	loc      map[pagestage.PageHash]uint64
	infos    []Info
	bad      []bool
	problems []error
}

// OpenReader loads the index of the sessions held with peer that a
// destination offers (the newest, and older ones while they leave room for
// a session as large as the newest). A session whose files turn out
// truncated or garbled is dropped and deleted, not offered (Problems lists
// them); the others are pinned until Close.
func (s *Store) OpenReader(peer string) *Reader {
	r := &Reader{st: s, loc: map[pagestage.PageHash]uint64{}}
	for _, sess := range s.pinForReading(peer) {
		if len(r.sessions) == maxSessions {
			s.unpin(sess, false)
			continue
		}
		if err := r.load(sess); err != nil {
			r.problems = append(r.problems, err)
			s.unpin(sess, true)
			continue
		}
	}
	return r
}

func (r *Reader) load(sess *session) error {
	f, err := os.Open(filepath.Join(r.st.dir, sess.name, dataName))
	if err != nil {
		return fmt.Errorf("pagestore: session %s: %w: %w", sess.meta.ID, ErrCorrupt, err)
	}
	if fi, err := f.Stat(); err != nil || uint64(fi.Size()) != sess.meta.Pages*PageSize {
		f.Close()
		return fmt.Errorf("pagestore: session %s: data changed size (want %d bytes): %w", sess.meta.ID, sess.meta.Pages*PageSize, ErrCorrupt)
	}
	si := uint64(len(r.sessions))
	var added []pagestage.PageHash
	dup := false
	err = r.st.readIndex(sess, func(p uint64, h pagestage.PageHash) {
		if l, ok := r.loc[h]; ok {
			// A page twice in one session is a garbled index; in two
			// sessions it is normal (the first one serves it).
			dup = dup || l>>locPageBits == si
			return
		}
		r.loc[h] = si<<locPageBits | p
		added = append(added, h)
	})
	if err == nil && dup {
		err = fmt.Errorf("pagestore: session %s: a page listed twice in the index: %w", sess.meta.ID, ErrCorrupt)
	}
	if err != nil {
		for _, h := range added {
			delete(r.loc, h)
		}
		f.Close()
		return err
	}
	r.sessions = append(r.sessions, sess)
	r.files = append(r.files, f)
	r.infos = append(r.infos, sess.info())
	r.bad = append(r.bad, false)
	return nil
}

// Sessions are the sessions the reader loaded, to offer to the source.
func (r *Reader) Sessions() []Info { return r.infos }

// Pages is the number of distinct pages the reader can serve.
func (r *Reader) Pages() int { return len(r.loc) }

// Problems are the sessions found corrupt while loading (now deleted).
func (r *Reader) Problems() []error { return r.problems }

// KnownPage copies the page with hash h into dst (PageSize bytes). A page
// whose content does not match its hash marks its session corrupt (it is
// deleted once the reader closes, and not offered again).
func (r *Reader) KnownPage(h pagestage.PageHash, dst []byte) error {
	l, ok := r.loc[h]
	if !ok {
		return fmt.Errorf("pagestore: page %v: %w", h, ErrUnknownPage)
	}
	if len(dst) < PageSize {
		return fmt.Errorf("pagestore: page %v: buffer of %d bytes: %w", h, len(dst), ErrInvalid)
	}
	si, p := l>>locPageBits, l&locPageMask
	sess := r.sessions[si]
	dst = dst[:PageSize]
	if _, err := r.files[si].ReadAt(dst, int64(p)*PageSize); err != nil {
		r.bad[si] = true
		r.st.markBad(sess)
		return fmt.Errorf("pagestore: session %s page %d: %w: %w", sess.meta.ID, p, ErrCorrupt, err)
	}
	if got := pagestage.PageHash(xxh3.Hash128(dst)); got != h {
		r.bad[si] = true
		r.st.markBad(sess)
		return fmt.Errorf("pagestore: session %s page %d hashes to %v, index says %v: %w", sess.meta.ID, p, got, h, ErrCorrupt)
	}
	return nil
}

// Close releases the sessions' files and pins.
func (r *Reader) Close() error {
	for i, sess := range r.sessions {
		r.files[i].Close()
		r.st.unpin(sess, r.bad[i])
	}
	r.sessions, r.files = nil, nil
	return nil
}

var _ pagestage.KnownStore = (*Reader)(nil)
