package pagestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/zeebo/xxh3"
)

// Buffering between the hot path and the writer: chunks of chunkPages
// pages, nChunks of them per recorder (8 MiB). The hot path blocks only
// when the writer is that far behind.
const (
	chunkPages = 256
	nChunks    = 8
)

// chunk is a run of pages on its way to disk with their index entries.
type chunk struct {
	data  []byte
	index []byte
}

// chunkPool keeps chunks between sessions: a fresh 8 MiB of buffers costs
// a page fault per 4 KiB on first use, as much as the recording itself.
var chunkPool sync.Pool

// Recorder records one session's pages. ObservePage is called from one
// goroutine (the page stage's); Finish once, from the same goroutine, when
// the session ended; Wait from anywhere.
type Recorder struct {
	st   *Store
	peer string
	id   SessionID
	name string // directory name
	dir  string
	data *os.File
	idx  *os.File

	// Hot path state, owned by the observing goroutine.
	seen     map[pagestage.PageHash]struct{}
	cur      *chunk
	stopped  bool
	maxPages uint64
	capped   bool

	full  chan *chunk
	free  chan *chunk
	stop  atomic.Bool   // the writer gave up: stop copying pages
	abort chan struct{} // closed by Store.Close before Finish

	// Under st.mu.
	finished bool

	commit    bool   // set by Finish before full is closed
	pages     uint64 // writer's count
	reserved  int64
	truncated bool
	done      chan struct{}
	err       error // the outcome, set before done is closed
}

// RecordOptions shape a recording.
type RecordOptions struct {
	// ExpectPages sizes the recorder's table of pages seen so far (0 if
	// unknown), so that it does not grow on the hot path.
	ExpectPages int
	// MaxPages stops recording after that many distinct pages (0: as
	// many as fit). Both hosts of a session record with the same cap, so
	// that a session too large for either history is cut at the same page
	// on both and stays usable.
	MaxPages uint64
}

// Record starts recording a session with peer under id. The caller must
// call Finish.
func (s *Store) Record(peer string, id SessionID, opts RecordOptions) (*Recorder, error) {
	if peer == "" || len(peer) > maxPeerLen {
		return nil, fmt.Errorf("pagestore: record: peer name of %d bytes, want 1..%d: %w", len(peer), maxPeerLen, ErrInvalid)
	}
	if _, err := ParseSessionID(string(id)); err != nil {
		return nil, fmt.Errorf("pagestore: record: %w", err)
	}
	r := &Recorder{
		st: s, peer: peer, id: id, maxPages: opts.MaxPages,
		full: make(chan *chunk, nChunks), free: make(chan *chunk, nChunks),
		abort: make(chan struct{}), done: make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, fmt.Errorf("pagestore: record %s: %w", id, ErrClosed)
	}
	for _, sess := range s.sessions {
		if sess.meta.Peer == peer && sess.meta.ID == id {
			s.mu.Unlock()
			return nil, fmt.Errorf("pagestore: record %s with %q: %w", id, peer, ErrExists)
		}
	}
	for o := range s.active {
		if o.peer == peer && o.id == id {
			s.mu.Unlock()
			return nil, fmt.Errorf("pagestore: record %s with %q: already recording: %w", id, peer, ErrExists)
		}
	}
	// Registered before any file exists, so that Close waits for it.
	s.active[r] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	expect := min(max(opts.ExpectPages, 0), int(s.limit/PageSize))
	if opts.MaxPages > 0 {
		expect = int(min(uint64(expect), opts.MaxPages))
	}
	if err := r.create(expect); err != nil {
		r.err = err
		r.stop.Store(true)
		r.stopped = true
	}
	go r.write()
	return r, nil
}

// create makes the session directory, its files and the buffers.
func (r *Recorder) create(expect int) error {
	name, err := r.st.newSessionDir()
	if err != nil {
		return err
	}
	r.name, r.dir = name, filepath.Join(r.st.dir, name)
	if r.data, err = os.OpenFile(filepath.Join(r.dir, dataName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
		return fmt.Errorf("pagestore: record %s: %w", r.id, err)
	}
	if r.idx, err = os.OpenFile(filepath.Join(r.dir, indexName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
		return fmt.Errorf("pagestore: record %s: %w", r.id, err)
	}
	r.seen = make(map[pagestage.PageHash]struct{}, expect)
	for i := range nChunks {
		c, _ := chunkPool.Get().(*chunk)
		if c == nil {
			c = &chunk{data: make([]byte, 0, chunkPages*PageSize), index: make([]byte, 0, chunkPages*hashSize)}
		}
		if i == 0 {
			r.cur = c
		} else {
			r.free <- c
		}
	}
	return nil
}

// ID is the session's id.
func (r *Recorder) ID() SessionID { return r.id }

// ObservePage records a page unless this session already holds it. It
// copies the page into a buffer; a writer goroutine appends full buffers
// to the session's files. It never fails: if the writer cannot go on (the
// disk, the size bound), recording stops and Finish reports why.
func (r *Recorder) ObservePage(h pagestage.PageHash, page []byte) {
	if r.stopped || len(page) != PageSize {
		return
	}
	if r.stop.Load() {
		r.stopped = true
		return
	}
	if _, ok := r.seen[h]; ok {
		return
	}
	if r.maxPages > 0 && uint64(len(r.seen)) >= r.maxPages {
		r.stopped, r.capped = true, true
		return
	}
	r.seen[h] = struct{}{}
	c := r.cur
	c.data = append(c.data, page...)
	c.index = appendHash(c.index, h)
	if len(c.data) == cap(c.data) {
		r.hand()
	}
}

// hand passes the current chunk to the writer and takes a free one.
func (r *Recorder) hand() {
	// full has room for every chunk, so this send never blocks.
	r.full <- r.cur
	r.cur = nil
	select {
	case r.cur = <-r.free:
	case <-r.abort:
		r.stopped = true
	}
}

// Finish ends the session: commit keeps it (call it only once the stream
// was verified end to end), otherwise it is deleted. It does not wait for
// the disk: the writer flushes, syncs and commits in the background; Wait
// reports the outcome.
func (r *Recorder) Finish(commit bool) {
	r.st.mu.Lock()
	if r.finished {
		r.st.mu.Unlock()
		return
	}
	r.finished = true
	r.st.mu.Unlock()
	r.commit = commit
	if r.cur != nil && len(r.cur.index) > 0 {
		r.full <- r.cur
	}
	r.cur = nil
	close(r.full)
}

// Wait waits for the writer and returns the outcome: nil once a committed
// session is on disk and held (or an aborted or empty one is gone), else
// why the session was not kept.
func (r *Recorder) Wait() error {
	<-r.done
	return r.err
}

// Pages is the number of pages written; Truncated tells whether recording
// stopped early because the session reached MaxPages or the size bound
// (the pages before that point are kept). Both wait for the writer.
func (r *Recorder) Pages() uint64 {
	<-r.done
	return r.pages
}

// Truncated: see Pages.
func (r *Recorder) Truncated() bool {
	<-r.done
	return r.truncated || r.capped
}

// write is the recorder's writer goroutine: it appends chunks to the files
// and, at the end, commits or deletes the session.
func (r *Recorder) write() {
	defer r.st.wg.Done()
	h := xxh3.New()
	err := r.err
	for open := true; open; {
		select {
		case c, ok := <-r.full:
			if !ok {
				open = false
				break
			}
			if err == nil && !r.truncated {
				err = r.writeChunk(c, h)
				if errors.Is(err, ErrFull) {
					// Keep the prefix recorded so far: both hosts
					// stop at the same page when their limits are
					// equal, and otherwise their digests differ
					// and neither offers the session.
					r.truncated, err = true, nil
				}
				if err != nil || r.truncated {
					r.stop.Store(true)
				}
			}
			c.data, c.index = c.data[:0], c.index[:0]
			r.free <- c
		case <-r.abort:
			if err == nil {
				err = fmt.Errorf("pagestore: record %s: %w", r.id, ErrClosed)
			}
			open = false
		}
	}
	if err == nil && r.commit && r.pages > 0 {
		err = r.commitFiles(pagestage.PageHash(h.Sum128()))
		if err == nil {
			r.end(nil)
			return
		}
	}
	r.discard()
	r.end(err)
}

func (r *Recorder) writeChunk(c *chunk, h *xxh3.Hasher) error {
	n := int64(len(c.data) + len(c.index))
	if r.pages+uint64(len(c.index)/hashSize) > maxPages {
		return fmt.Errorf("pagestore: record %s: over %d pages: %w", r.id, uint64(maxPages), ErrFull)
	}
	if err := r.st.reserve(n); err != nil {
		return fmt.Errorf("pagestore: record %s: %w", r.id, err)
	}
	r.reserved += n
	if _, err := r.data.Write(c.data); err != nil {
		return fmt.Errorf("pagestore: record %s: write pages: %w", r.id, err)
	}
	if _, err := r.idx.Write(c.index); err != nil {
		return fmt.Errorf("pagestore: record %s: write index: %w", r.id, err)
	}
	_, _ = h.Write(c.index)
	r.pages += uint64(len(c.index) / hashSize)
	return nil
}

// commitFiles makes the session durable, then writes its meta file, whose
// appearance (by rename) is the commit.
func (r *Recorder) commitFiles(digest pagestage.PageHash) error {
	for _, f := range []*os.File{r.data, r.idx} {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("pagestore: commit %s: sync %s: %w", r.id, f.Name(), err)
		}
	}
	m := Meta{Peer: r.peer, ID: r.id, Committed: time.Now(), Pages: r.pages, Digest: digest}
	meta := appendMeta(nil, m)
	tmp := filepath.Join(r.dir, metaTmpName)
	if err := writeSynced(tmp, meta); err != nil {
		return fmt.Errorf("pagestore: commit %s: %w", r.id, err)
	}
	if err := os.Rename(tmp, filepath.Join(r.dir, metaName)); err != nil {
		return fmt.Errorf("pagestore: commit %s: %w", r.id, err)
	}
	if err := syncDir(r.dir); err != nil {
		return fmt.Errorf("pagestore: commit %s: %w", r.id, err)
	}
	r.closeFiles()
	size := r.reserved + int64(len(meta))
	s := r.st
	s.mu.Lock()
	s.used += int64(len(meta))
	s.seq++
	s.sessions[r.name] = &session{name: r.name, meta: m, size: size, seq: s.seq}
	victims, _ := s.evictLocked(0)
	s.mu.Unlock()
	s.deleteAll(victims)
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (r *Recorder) closeFiles() {
	if r.data != nil {
		r.data.Close()
		r.data = nil
	}
	if r.idx != nil {
		r.idx.Close()
		r.idx = nil
	}
}

// discard deletes an uncommitted session and gives back its reservation.
func (r *Recorder) discard() {
	r.closeFiles()
	if r.dir != "" {
		_ = os.RemoveAll(r.dir)
	}
	r.st.release(r.reserved)
	r.reserved = 0
}

// end unregisters the recorder and publishes the outcome.
func (r *Recorder) end(err error) {
	// Chunks in free are nobody's: the hot path has finished, or, after
	// an abort, takes a chunk from free only by receiving it.
	for drained := false; !drained; {
		select {
		case c := <-r.free:
			c.data, c.index = c.data[:0], c.index[:0]
			chunkPool.Put(c)
		default:
			drained = true
		}
	}
	r.st.mu.Lock()
	delete(r.st.active, r)
	r.st.mu.Unlock()
	r.err = err
	close(r.done)
}
