package pagestore

import "github.com/dwcp/dwcp/host/pagestage"

// Set is what a source knows the destination holds (it implements
// pagestage.KnownSource): the pages of the sessions both hosts hold. It
// lives in memory; lookups allocate nothing. Safe for concurrent lookups.
type Set struct {
	pages    map[pagestage.PageHash]struct{}
	infos    []Info
	problems []error
}

// KnownSet loads the sessions held with peer that match one the peer
// offered (same id, page count and index digest: both hosts recorded the
// same pages). A session whose files turn out garbled is dropped and
// deleted (Problems lists them). The sessions are not pinned: the set
// needs nothing from disk once loaded.
func (s *Store) KnownSet(peer string, offered []Info) *Set {
	k := &Set{pages: map[pagestage.PageHash]struct{}{}}
	if len(offered) == 0 {
		return k
	}
	for _, sess := range s.pin(peer, offered) {
		var added []pagestage.PageHash
		err := s.readIndex(sess, func(_ uint64, h pagestage.PageHash) {
			if _, ok := k.pages[h]; !ok {
				k.pages[h] = struct{}{}
				added = append(added, h)
			}
		})
		if err != nil {
			for _, h := range added {
				delete(k.pages, h)
			}
			k.problems = append(k.problems, err)
			s.unpin(sess, true)
			continue
		}
		k.infos = append(k.infos, sess.info())
		s.unpin(sess, false)
	}
	return k
}

// Known reports whether the destination holds a page with hash h.
func (k *Set) Known(h pagestage.PageHash) bool {
	_, ok := k.pages[h]
	return ok
}

// Len is the number of distinct pages in the set.
func (k *Set) Len() int { return len(k.pages) }

// Sessions are the sessions the set was built from.
func (k *Set) Sessions() []Info { return k.infos }

// Problems are the sessions found corrupt while loading (now deleted).
func (k *Set) Problems() []error { return k.problems }

var _ pagestage.KnownSource = (*Set)(nil)
