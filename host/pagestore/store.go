package pagestore

import (
	"cmp"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
)

// PageSize is the size of every recorded page.
const PageSize = pagestage.PageSize

// DefaultLimit bounds the history when Options.Limit is 0: a few
// migrations of a guest of a few GiB, on a disk that holds their images.
const DefaultLimit int64 = 4 << 30

// Names inside the history directory.
const (
	lockName      = "lock"
	sessionPrefix = "s-"
	metaName      = "meta"
	metaTmpName   = "meta.tmp"
	indexName     = "index"
	dataName      = "data"
)

// Options configure a Store.
type Options struct {
	// Limit bounds the bytes of all sessions on disk (pages, indexes and
	// meta files). 0 means DefaultLimit; it must not be negative.
	Limit int64
}

// Info describes a committed session.
type Info struct {
	ID        SessionID
	Pages     uint64
	Digest    pagestage.PageHash
	Committed time.Time
}

// Stats is a snapshot of the store.
type Stats struct {
	Sessions int
	Bytes    int64 // on disk and reserved by recorders
	Limit    int64
	// RemovedAtOpen counts session directories deleted when the store was
	// opened: leftovers of a crash or a session that never committed, and
	// corrupt ones.
	RemovedAtOpen int
}

// Store is the page history of one host. Its methods are safe for
// concurrent use.
type Store struct {
	dir   string
	limit int64
	lock  *os.File

	mu       sync.Mutex
	sessions map[string]*session // committed, by directory name
	active   map[*Recorder]struct{}
	used     int64 // committed sessions plus recorders' reservations
	seq      uint64
	closed   bool
	removed  int
	wg       sync.WaitGroup // recorders' writers
}

// session is a committed session in the catalog.
type session struct {
	name string // directory name
	meta Meta
	size int64
	seq  uint64 // commit order: eviction takes the lowest
	pins int
	// gone: evicted or found corrupt, no longer in the catalog; its files
	// are deleted once the last pin is released.
	gone bool
}

// Open opens (creating it if needed) the history in dir and takes the
// directory's lock. Sessions that were never committed, or whose files do
// not match their meta, are deleted: a crash leaves them behind, and
// nothing in them is trusted.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Limit < 0 {
		return nil, fmt.Errorf("pagestore: open %s: negative limit %d: %w", dir, opts.Limit, ErrInvalid)
	}
	if opts.Limit == 0 {
		opts.Limit = DefaultLimit
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pagestore: open %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pagestore: open %s: %w", dir, err)
	}
	if err := lockDir(lock); err != nil {
		lock.Close()
		return nil, err
	}
	s := &Store{dir: dir, limit: opts.Limit, lock: lock, sessions: map[string]*session{}, active: map[*Recorder]struct{}{}}
	if err := s.scan(); err != nil {
		lock.Close()
		return nil, err
	}
	return s, nil
}

// scan loads the committed sessions and deletes everything else that is
// named like a session.
func (s *Store) scan() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("pagestore: open %s: %w", s.dir, err)
	}
	var found []*session
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, sessionPrefix) {
			continue
		}
		sess, err := loadSession(s.dir, name)
		if err != nil {
			if rerr := os.RemoveAll(filepath.Join(s.dir, name)); rerr != nil {
				return fmt.Errorf("pagestore: remove %s: %w", name, rerr)
			}
			s.removed++
			continue
		}
		found = append(found, sess)
	}
	slices.SortFunc(found, func(a, b *session) int {
		return cmp.Or(a.meta.Committed.Compare(b.meta.Committed), strings.Compare(a.name, b.name))
	})
	seen := map[[2]string]*session{}
	for _, sess := range found {
		key := [2]string{sess.meta.Peer, string(sess.meta.ID)}
		if old := seen[key]; old != nil {
			// Cannot happen through Record; keep the newer copy.
			delete(s.sessions, old.name)
			s.used -= old.size
			_ = os.RemoveAll(filepath.Join(s.dir, old.name))
			s.removed++
		}
		seen[key] = sess
		s.seq++
		sess.seq = s.seq
		s.sessions[sess.name] = sess
		s.used += sess.size
	}
	victims, _ := s.evictLocked(0)
	s.deleteAll(victims)
	return nil
}

// loadSession checks what can be checked without reading the index: the
// meta file, and index and data sizes that match it.
func loadSession(dir, name string) (*session, error) {
	if _, err := hex.DecodeString(strings.TrimPrefix(name, sessionPrefix)); err != nil || len(name) != len(sessionPrefix)+16 {
		return nil, fmt.Errorf("session directory %q: %w", name, ErrCorrupt)
	}
	path := filepath.Join(dir, name)
	m, metaSize, err := readMeta(filepath.Join(path, metaName))
	if err != nil {
		return nil, err
	}
	size := metaSize
	for _, f := range []struct {
		name string
		want uint64
	}{{indexName, m.Pages * hashSize}, {dataName, m.Pages * PageSize}} {
		fi, err := os.Lstat(filepath.Join(path, f.name))
		if err != nil {
			return nil, fmt.Errorf("session %s: %w: %w", name, ErrCorrupt, err)
		}
		if !fi.Mode().IsRegular() || uint64(fi.Size()) != f.want {
			return nil, fmt.Errorf("session %s: %s is %d bytes (%v), meta says %d: %w", name, f.name, fi.Size(), fi.Mode(), f.want, ErrCorrupt)
		}
		size += fi.Size()
	}
	return &session{name: name, meta: m, size: size}, nil
}

func readMeta(path string) (Meta, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return Meta{}, 0, fmt.Errorf("meta %s: %w: %w", path, ErrCorrupt, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetaBytes+1))
	if err != nil {
		return Meta{}, 0, fmt.Errorf("meta %s: %w: %w", path, ErrCorrupt, err)
	}
	m, err := parseMeta(b)
	if err != nil {
		return Meta{}, 0, fmt.Errorf("meta %s: %w", path, err)
	}
	return m, int64(len(b)), nil
}

// Close stops recording: recorders not yet finished are aborted (their
// sessions deleted), finished ones complete their commit. It waits for
// every recorder's writer, then releases the directory. Readers and sets
// stay usable until closed themselves.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for r := range s.active {
		if !r.finished {
			r.stop.Store(true)
			close(r.abort)
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return s.lock.Close()
}

// Dir is the history's directory.
func (s *Store) Dir() string { return s.dir }

// Stats returns a snapshot of the store's counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Sessions: len(s.sessions), Bytes: s.used, Limit: s.limit, RemovedAtOpen: s.removed}
}

// Held returns the committed sessions with peer, oldest first.
func (s *Store) Held(peer string) []Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*session
	for _, sess := range s.sessions {
		if sess.meta.Peer == peer {
			out = append(out, sess)
		}
	}
	slices.SortFunc(out, func(a, b *session) int { return cmp.Compare(a.seq, b.seq) })
	infos := make([]Info, len(out))
	for i, sess := range out {
		infos[i] = sess.info()
	}
	return infos
}

func (sess *session) info() Info {
	return Info{ID: sess.meta.ID, Pages: sess.meta.Pages, Digest: sess.meta.Digest, Committed: sess.meta.Committed}
}

// pageCost is what a recorded page costs on disk: its content and its
// index entry.
const pageCost = PageSize + hashSize

// metaAllowance is kept free for a session's meta file.
const metaAllowance = maxMetaBytes

// Capacity is how many pages a new session could record now, if every
// session not in use were evicted: the bound, less the sessions readers
// pin and what running recorders have reserved. 0 means no room.
func (s *Store) Capacity() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	busy := s.used
	for _, sess := range s.sessions {
		if sess.pins == 0 {
			busy -= sess.size
		}
	}
	free := s.limit - busy - metaAllowance
	if free < pageCost {
		return 0
	}
	return min(uint64(free/pageCost), maxPages)
}

// evictLocked makes room for n more bytes by taking whole sessions out of
// the catalog, oldest first, never a pinned one. If even evicting every
// unpinned session would not make room, it evicts nothing and reports
// false. The caller deletes the victims' files after unlocking.
func (s *Store) evictLocked(n int64) ([]*session, bool) {
	if s.used+n <= s.limit {
		return nil, true
	}
	var free int64
	var cands []*session
	for _, sess := range s.sessions {
		if sess.pins == 0 {
			free += sess.size
			cands = append(cands, sess)
		}
	}
	if s.used-free+n > s.limit {
		return nil, false
	}
	slices.SortFunc(cands, func(a, b *session) int { return cmp.Compare(a.seq, b.seq) })
	var victims []*session
	for _, sess := range cands {
		if s.used+n <= s.limit {
			break
		}
		s.dropLocked(sess)
		victims = append(victims, sess)
	}
	return victims, true
}

// dropLocked takes a session out of the catalog.
func (s *Store) dropLocked(sess *session) {
	if sess.gone {
		return
	}
	sess.gone = true
	delete(s.sessions, sess.name)
	s.used -= sess.size
}

// deleteAll removes the files of dropped, unpinned sessions.
func (s *Store) deleteAll(victims []*session) {
	for _, v := range victims {
		_ = os.RemoveAll(filepath.Join(s.dir, v.name))
	}
}

// reserve accounts n bytes a recorder is about to write, evicting old
// sessions if needed.
func (s *Store) reserve(n int64) error {
	s.mu.Lock()
	victims, ok := s.evictLocked(n)
	if ok {
		s.used += n
	}
	s.mu.Unlock()
	s.deleteAll(victims)
	if !ok {
		return fmt.Errorf("pagestore: %d more bytes over the limit of %d: %w", n, s.limit, ErrFull)
	}
	return nil
}

func (s *Store) release(n int64) {
	s.mu.Lock()
	s.used -= n
	s.mu.Unlock()
}

// pin finds the sessions of peer that match want and pins them, oldest
// first.
func (s *Store) pin(peer string, want []Info) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*session
	for _, sess := range s.sessions {
		if sess.meta.Peer != peer {
			continue
		}
		if !slices.ContainsFunc(want, func(i Info) bool {
			return i.ID == sess.meta.ID && i.Pages == sess.meta.Pages && i.Digest == sess.meta.Digest
		}) {
			continue
		}
		sess.pins++
		out = append(out, sess)
	}
	slices.SortFunc(out, func(a, b *session) int { return cmp.Compare(a.seq, b.seq) })
	return out
}

// pinForReading pins the sessions of peer a destination offers: the
// newest first, as many as leave room under the bound for one more
// session as large as the newest (the one being recorded now, likely of
// the same guest), but at least the newest. Pinning every session held
// with a peer would keep a history full of that peer's sessions from ever
// making room for the next one.
func (s *Store) pinForReading(peer string) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var all []*session
	for _, sess := range s.sessions {
		if sess.meta.Peer == peer {
			all = append(all, sess)
		}
	}
	slices.SortFunc(all, func(a, b *session) int { return cmp.Compare(b.seq, a.seq) })
	var out []*session
	var sum int64
	for i, sess := range all {
		if i > 0 && sum+sess.size+all[0].size > s.limit {
			break
		}
		sum += sess.size
		sess.pins++
		out = append(out, sess)
	}
	slices.Reverse(out)
	return out
}

// unpin releases a pin; bad drops the session (its files did not match
// what they promised). Files of a dropped session go with its last pin.
func (s *Store) unpin(sess *session, bad bool) {
	s.mu.Lock()
	sess.pins--
	if bad {
		s.dropLocked(sess)
	}
	del := sess.gone && sess.pins == 0 && !s.closed
	s.mu.Unlock()
	if del {
		s.deleteAll([]*session{sess})
	}
}

// markBad drops a session found corrupt while it stays pinned.
func (s *Store) markBad(sess *session) {
	s.mu.Lock()
	s.dropLocked(sess)
	s.mu.Unlock()
}

// readIndex reads and checks a session's index.
func (s *Store) readIndex(sess *session, fn func(page uint64, h pagestage.PageHash)) error {
	path := filepath.Join(s.dir, sess.name, indexName)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("pagestore: session %s: %w: %w", sess.meta.ID, ErrCorrupt, err)
	}
	defer f.Close()
	want := sess.meta.Pages * hashSize
	if fi, err := f.Stat(); err != nil || uint64(fi.Size()) != want {
		return fmt.Errorf("pagestore: session %s: index changed size (want %d bytes): %w", sess.meta.ID, want, ErrCorrupt)
	}
	buf := make([]byte, want)
	if _, err := io.ReadFull(f, buf); err != nil {
		return fmt.Errorf("pagestore: session %s: read index: %w: %w", sess.meta.ID, ErrCorrupt, err)
	}
	if err := parseIndex(buf, sess.meta, fn); err != nil {
		return fmt.Errorf("pagestore: session %s: %w", sess.meta.ID, err)
	}
	return nil
}

// newSessionDir creates a directory for a new session.
func (s *Store) newSessionDir() (string, error) {
	for range 8 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		name := sessionPrefix + hex.EncodeToString(b[:])
		err := os.Mkdir(filepath.Join(s.dir, name), 0o700)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("pagestore: create session directory: %w", err)
		}
	}
	return "", fmt.Errorf("pagestore: create session directory: no free name in %s", s.dir)
}
