package pagestore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/host/pagestage"
	"github.com/zeebo/xxh3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testPage is page number n of a test guest: distinct for every n, and
// compressible like real memory (a counter pattern plus noise).
func testPage(n uint64) []byte {
	p := make([]byte, PageSize)
	rng := rand.New(rand.NewPCG(n, 0x9e37))
	for i := 0; i < PageSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], n<<20|uint64(i)|rng.Uint64()&0xff<<40)
	}
	return p
}

func hashOf(p []byte) pagestage.PageHash { return pagestage.PageHash(xxh3.Hash128(p)) }

func open(t testing.TB, dir string, limit int64) *Store {
	t.Helper()
	s, err := Open(dir, Options{Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// record records pages first..first+n-1 (each observed twice: the second
// time must not be written again) and commits.
func record(t testing.TB, s *Store, peer string, id SessionID, first, n uint64) error {
	t.Helper()
	r, err := s.Record(peer, id, RecordOptions{ExpectPages: int(n)})
	if err != nil {
		t.Fatal(err)
	}
	for i := first; i < first+n; i++ {
		p := testPage(i)
		r.ObservePage(hashOf(p), p)
		r.ObservePage(hashOf(p), p)
	}
	r.Finish(true)
	return r.Wait()
}

func sessionDirs(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, sessionPrefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRecordCommitAndReadBack(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	defer s.Close()
	if err := record(t, s, "hostB", "m1", 0, 1000); err != nil {
		t.Fatal(err)
	}
	held := s.Held("hostB")
	if len(held) != 1 || held[0].ID != "m1" || held[0].Pages != 1000 {
		t.Fatalf("held %+v, want m1 with 1000 pages", held)
	}
	if fi, err := os.Stat(filepath.Join(sessionDirs(t, dir)[0], dataName)); err != nil || fi.Size() != 1000*PageSize {
		t.Fatalf("data file: %v %v, want %d bytes (each page once)", fi.Size(), err, 1000*PageSize)
	}
	if len(s.Held("hostC")) != 0 {
		t.Fatal("a session with hostB is held for hostC")
	}

	r := s.OpenReader("hostB")
	defer r.Close()
	if len(r.Sessions()) != 1 || r.Pages() != 1000 || len(r.Problems()) != 0 {
		t.Fatalf("reader: sessions %+v, %d pages, problems %v", r.Sessions(), r.Pages(), r.Problems())
	}
	dst := make([]byte, PageSize)
	for i := range uint64(1000) {
		p := testPage(i)
		if err := r.KnownPage(hashOf(p), dst); err != nil || !bytes.Equal(dst, p) {
			t.Fatalf("page %d: %v, content equal %v", i, err, bytes.Equal(dst, p))
		}
	}
	if err := r.KnownPage(hashOf(testPage(5000)), dst); !errors.Is(err, ErrUnknownPage) {
		t.Fatalf("unrecorded page: %v, want ErrUnknownPage", err)
	}

	set := s.KnownSet("hostB", r.Sessions())
	if set.Len() != 1000 || !set.Known(hashOf(testPage(7))) || set.Known(hashOf(testPage(1000))) {
		t.Fatalf("set of %d pages, page 7 %v, page 1000 %v", set.Len(), set.Known(hashOf(testPage(7))), set.Known(hashOf(testPage(1000))))
	}
	if s.KnownSet("hostC", r.Sessions()).Len() != 0 || s.OpenReader("hostC").Pages() != 0 {
		t.Fatal("another peer sees hostB's pages")
	}
	// A session offered with another digest or page count is not used.
	for _, mut := range []func(*Info){
		func(i *Info) { i.Digest.Lo ^= 1 },
		func(i *Info) { i.Pages-- },
		func(i *Info) { i.ID = "m2" },
	} {
		in := r.Sessions()[0]
		mut(&in)
		if n := s.KnownSet("hostB", []Info{in}).Len(); n != 0 {
			t.Fatalf("mismatching offer %+v gave %d pages", in, n)
		}
	}
}

// Two hosts that see the same pages in the same order record the same
// session: same page count and index digest, whatever their limits.
func TestBothEndsRecordTheSameSession(t *testing.T) {
	a, b := open(t, t.TempDir(), 0), open(t, t.TempDir(), 64<<20)
	defer a.Close()
	defer b.Close()
	if err := record(t, a, "B", "x", 0, 700); err != nil {
		t.Fatal(err)
	}
	if err := record(t, b, "A", "x", 0, 700); err != nil {
		t.Fatal(err)
	}
	ha, hb := a.Held("B"), b.Held("A")
	if len(ha) != 1 || len(hb) != 1 || ha[0].Pages != hb[0].Pages || ha[0].Digest != hb[0].Digest {
		t.Fatalf("A holds %+v, B holds %+v", ha, hb)
	}
	if a.KnownSet("B", hb).Len() != 700 {
		t.Fatal("A does not use the session B offers")
	}
}

func TestAbortAndEmptySessionsLeaveNothing(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	defer s.Close()
	r, err := s.Record("B", "gone", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(600) { // more than two chunks reach the disk
		p := testPage(i)
		r.ObservePage(hashOf(p), p)
	}
	r.Finish(false)
	r.Finish(false) // a second call is harmless
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	empty, err := s.Record("B", "empty", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	empty.Finish(true)
	if err := empty.Wait(); err != nil {
		t.Fatal(err)
	}
	if len(s.Held("B")) != 0 || len(sessionDirs(t, dir)) != 0 || s.Stats().Bytes != 0 {
		t.Fatalf("held %v, dirs %v, bytes %d after an abort and an empty session", s.Held("B"), sessionDirs(t, dir), s.Stats().Bytes)
	}
}

func TestRecordRejectsBadArguments(t *testing.T) {
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	for _, c := range []struct {
		peer string
		id   SessionID
		want error
	}{
		{"", "a", ErrInvalid},
		{strings.Repeat("p", maxPeerLen+1), "a", ErrInvalid},
		{"B", "", ErrInvalid},
		{"B", "../x", ErrInvalid},
		{"B", SessionID(strings.Repeat("a", maxIDLen+1)), ErrInvalid},
	} {
		if _, err := s.Record(c.peer, c.id, RecordOptions{}); !errors.Is(err, c.want) {
			t.Errorf("Record(%q, %q): %v, want %v", c.peer, c.id, err, c.want)
		}
	}
	r, err := s.Record("B", "dup", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record("B", "dup", RecordOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second recorder of B/dup: %v", err)
	}
	p := testPage(1)
	r.ObservePage(hashOf(p), p)
	r.Finish(true)
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Record("B", "dup", RecordOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("recording a held B/dup again: %v", err)
	}
	other, err := s.Record("C", "dup", RecordOptions{}) // another peer may use the same id
	if err != nil {
		t.Fatal(err)
	}
	other.Finish(false)
	if err := other.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(t.TempDir(), Options{Limit: -1}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative limit: %v", err)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	s.Close()
	s2 := open(t, dir, 0)
	s2.Close()
}

// Whatever a crash leaves — a session without meta, a half-written meta,
// a meta that does not match its files, stray files named like sessions —
// is deleted at Open; committed sessions survive.
func TestOpenDeletesCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	if err := record(t, s, "B", "kept", 0, 300); err != nil {
		t.Fatal(err)
	}
	s.Close()
	good := sessionDirs(t, dir)[0]
	copyDir := func(name string, edit func(d string)) {
		d := filepath.Join(dir, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{metaName, indexName, dataName} {
			b, err := os.ReadFile(filepath.Join(good, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		edit(d)
	}
	copyDir("s-0000000000000001", func(d string) { os.Remove(filepath.Join(d, metaName)) })
	copyDir("s-0000000000000002", func(d string) {
		os.Rename(filepath.Join(d, metaName), filepath.Join(d, metaTmpName))
	})
	copyDir("s-0000000000000003", func(d string) { os.Truncate(filepath.Join(d, dataName), 299*PageSize) })
	copyDir("s-0000000000000004", func(d string) { os.Truncate(filepath.Join(d, indexName), 17) })
	copyDir("s-0000000000000005", func(d string) { os.WriteFile(filepath.Join(d, metaName), []byte("garbage"), 0o600) })
	copyDir("s-nothex", func(string) {})
	os.WriteFile(filepath.Join(dir, "s-0000000000000006"), []byte("a file"), 0o600)
	os.WriteFile(filepath.Join(dir, "unrelated"), []byte("not ours"), 0o600)

	s = open(t, dir, 0)
	defer s.Close()
	if st := s.Stats(); st.RemovedAtOpen != 7 || st.Sessions != 1 {
		t.Fatalf("stats %+v, want 7 removed and the committed session kept", st)
	}
	if got := sessionDirs(t, dir); len(got) != 1 || got[0] != good {
		t.Fatalf("left %v, want only %s", got, good)
	}
	if _, err := os.Stat(filepath.Join(dir, "unrelated")); err != nil {
		t.Fatal("a file not named like a session was deleted")
	}
	if held := s.Held("B"); len(held) != 1 || held[0].ID != "kept" {
		t.Fatalf("held %+v", held)
	}
}

// Garbling a file that Open cannot check without reading it (index
// contents, data contents) is found when the session is used: the session
// is then not used, and deleted.
func TestCorruptSessionsAreDroppedWhenUsed(t *testing.T) {
	for _, c := range []struct {
		name string
		file string
		off  int64
	}{
		{"index byte", indexName, 100},
		{"data byte", dataName, 5*PageSize + 17},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, 0)
			defer s.Close()
			if err := record(t, s, "B", "a", 0, 64); err != nil {
				t.Fatal(err)
			}
			if err := record(t, s, "B", "b", 1000, 64); err != nil {
				t.Fatal(err)
			}
			victim := ""
			for _, d := range sessionDirs(t, dir) {
				if m, _, _ := readMeta(filepath.Join(d, metaName)); m.ID == "a" {
					victim = d
				}
			}
			f, err := os.OpenFile(filepath.Join(victim, c.file), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			b := []byte{0}
			f.ReadAt(b, c.off)
			b[0] ^= 0x20
			f.WriteAt(b, c.off)
			f.Close()

			offered := s.Held("B")
			r := s.OpenReader("B")
			dst := make([]byte, PageSize)
			if c.file == indexName {
				if len(r.Sessions()) != 1 || r.Sessions()[0].ID != "b" || len(r.Problems()) != 1 || !errors.Is(r.Problems()[0], ErrCorrupt) {
					t.Fatalf("reader sessions %+v problems %v", r.Sessions(), r.Problems())
				}
				if set := s.KnownSet("B", offered); set.Len() != 64 {
					t.Fatalf("set of %d pages, want session b's 64", set.Len())
				}
			} else {
				if len(r.Sessions()) != 2 {
					t.Fatalf("reader sessions %+v", r.Sessions())
				}
				if err := r.KnownPage(hashOf(testPage(5)), dst); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("garbled page: %v, want ErrCorrupt", err)
				}
				if err := r.KnownPage(hashOf(testPage(6)), dst); err != nil || !bytes.Equal(dst, testPage(6)) {
					t.Fatalf("intact page of the same session: %v", err)
				}
			}
			if err := r.KnownPage(hashOf(testPage(1001)), dst); err != nil || !bytes.Equal(dst, testPage(1001)) {
				t.Fatalf("page of the intact session: %v", err)
			}
			r.Close()
			if held := s.Held("B"); len(held) != 1 || held[0].ID != "b" {
				t.Fatalf("held after the corruption was found: %+v", held)
			}
			if _, err := os.Stat(victim); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("corrupt session still on disk: %v", err)
			}
		})
	}
}

// Eviction takes whole sessions, oldest first, never one a reader pins;
// a session that outgrows the bound keeps the prefix that fits.
func TestEvictionOldestFirstNeverPinned(t *testing.T) {
	const pages = 256 // one chunk
	size := int64(pages * (PageSize + hashSize))
	dir := t.TempDir()
	s := open(t, dir, 3*size+3*512) // three sessions and their meta files
	defer s.Close()
	for i, id := range []SessionID{"s1", "s2", "s3"} {
		if err := record(t, s, "B", id, uint64(i*pages), pages); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() string {
		var out []string
		for _, h := range s.Held("B") {
			out = append(out, fmt.Sprintf("%s:%d", h.ID, h.Pages))
		}
		return strings.Join(out, ",")
	}
	if got := ids(); got != "s1:256,s2:256,s3:256" {
		t.Fatalf("held %s", got)
	}
	// A reader pins the newest sessions that leave room for one more of
	// the newest's size: s3 and s2, not s1.
	r := s.OpenReader("B")
	if got := r.Sessions(); len(got) != 2 || got[0].ID != "s2" || got[1].ID != "s3" {
		t.Fatalf("reader offers %+v, want s2, s3", got)
	}
	if c := s.Capacity(); c < pages-1 || c > pages+1 {
		t.Fatalf("capacity %d pages with s2, s3 pinned, want about %d", c, pages)
	}
	if err := record(t, s, "B", "s4", 10*pages, pages); err != nil {
		t.Fatal(err)
	}
	if got := ids(); got != "s2:256,s3:256,s4:256" {
		t.Fatalf("held %s, want the oldest (s1) evicted", got)
	}
	// With s2 and s3 still pinned, the next session evicts s4 although
	// it is younger.
	if err := record(t, s, "B", "s5", 20*pages, pages); err != nil {
		t.Fatal(err)
	}
	if got := ids(); got != "s2:256,s3:256,s5:256" {
		t.Fatalf("held %s, want s4 evicted (s2, s3 pinned)", got)
	}
	r.Close()
	// With everything pinned nothing fits: the session keeps nothing.
	pinned := s.pin("B", s.Held("B"))
	if s.Capacity() != 0 {
		t.Fatalf("capacity %d with everything pinned", s.Capacity())
	}
	if err := record(t, s, "B", "s6", 30*pages, pages); err != nil {
		t.Fatal(err)
	}
	if got := ids(); got != "s2:256,s3:256,s5:256" {
		t.Fatalf("held %s after a session that found every other pinned", got)
	}
	for _, p := range pinned {
		s.unpin(p, false)
	}
	// A session larger than the bound evicts everything else and keeps
	// the chunks that fit.
	r2, err := s.Record("B", "huge", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(5 * pages) {
		p := testPage(100*pages + i)
		r2.ObservePage(hashOf(p), p)
	}
	r2.Finish(true)
	if err := r2.Wait(); err != nil || !r2.Truncated() || r2.Pages() != 3*pages {
		t.Fatalf("oversized session: %v, truncated %v, %d pages", err, r2.Truncated(), r2.Pages())
	}
	if got := ids(); got != "huge:768" {
		t.Fatalf("held %s", got)
	}
	if n := len(sessionDirs(t, dir)); n != 1 || s.Stats().Bytes > s.Stats().Limit {
		t.Fatalf("%d session directories, %d of %d bytes", n, s.Stats().Bytes, s.Stats().Limit)
	}
	// The truncated session is a usable prefix.
	rd := s.OpenReader("B")
	dst := make([]byte, PageSize)
	if err := rd.KnownPage(hashOf(testPage(100*pages+767)), dst); err != nil {
		t.Fatal(err)
	}
	if err := rd.KnownPage(hashOf(testPage(100*pages+768)), dst); !errors.Is(err, ErrUnknownPage) {
		t.Fatalf("page past the truncation: %v", err)
	}
	rd.Close()
	// Reopening with a smaller bound evicts at Open; other peers'
	// sessions count toward the same bound.
	if err := record(t, s, "C", "c1", 0, 10); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir, size)
	defer s.Close()
	if got := ids(); got != "" || len(s.Held("C")) != 1 {
		t.Fatalf("reopened with a one-session bound: held %s and %+v, want only C's newer session", got, s.Held("C"))
	}
}

// A recording capped at MaxPages keeps exactly the first MaxPages distinct
// pages: two hosts with the same cap record the same session, whatever
// their bounds.
func TestMaxPagesCutsAtTheSamePage(t *testing.T) {
	a, b := open(t, t.TempDir(), 0), open(t, t.TempDir(), 8<<20)
	defer a.Close()
	defer b.Close()
	for _, s := range []*Store{a, b} {
		r, err := s.Record("P", "capped", RecordOptions{MaxPages: 300})
		if err != nil {
			t.Fatal(err)
		}
		for i := range uint64(1000) {
			p := testPage(i % 700) // repeats do not count
			r.ObservePage(hashOf(p), p)
		}
		r.Finish(true)
		if err := r.Wait(); err != nil || !r.Truncated() || r.Pages() != 300 {
			t.Fatalf("capped recording: %v, truncated %v, %d pages", err, r.Truncated(), r.Pages())
		}
	}
	ha, hb := a.Held("P"), b.Held("P")
	if len(ha) != 1 || len(hb) != 1 || ha[0].Digest != hb[0].Digest || ha[0].Pages != 300 {
		t.Fatalf("A holds %+v, B holds %+v", ha, hb)
	}
	set := a.KnownSet("P", hb)
	if !set.Known(hashOf(testPage(299))) || set.Known(hashOf(testPage(300))) {
		t.Fatal("the cap did not keep exactly the first 300 pages")
	}
}

// Closing the store aborts recorders still running (the session is
// deleted, the hot path does not block) and lets finished ones commit.
func TestCloseAbortsRunningRecorders(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 0)
	running, err := s.Record("B", "running", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	finished, err := s.Record("B", "finished", RecordOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(300) {
		p := testPage(i)
		running.ObservePage(hashOf(p), p)
		finished.ObservePage(hashOf(p), p)
	}
	finished.Finish(true)
	s.Close()
	for i := range uint64(5000) { // far more than the buffers hold
		p := testPage(i + 300)
		running.ObservePage(hashOf(p), p)
	}
	running.Finish(true)
	if err := running.Wait(); !errors.Is(err, ErrClosed) {
		t.Fatalf("recorder running at Close: %v, want ErrClosed", err)
	}
	if err := finished.Wait(); err != nil {
		t.Fatalf("recorder finished before Close: %v", err)
	}
	if _, err := s.Record("B", "late", RecordOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Record after Close: %v", err)
	}
	s = open(t, dir, 0)
	defer s.Close()
	if held := s.Held("B"); len(held) != 1 || held[0].ID != "finished" || held[0].Pages != 300 {
		t.Fatalf("held after reopening: %+v", held)
	}
}

// Recorders, readers and sets of several sessions at once (run with -race).
func TestConcurrentSessions(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, 6*300*(PageSize+hashSize))
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 3 {
				id := SessionID(fmt.Sprintf("w%d-%d", w, k))
				r, err := s.Record("B", id, RecordOptions{ExpectPages: 300})
				if err != nil {
					errs <- err
					return
				}
				for i := range uint64(300) {
					p := testPage(uint64(w*10000+k*1000) + i)
					r.ObservePage(hashOf(p), p)
				}
				r.Finish(true)
				if err := r.Wait(); err != nil && !errors.Is(err, ErrFull) {
					errs <- err
					return
				}
				rd := s.OpenReader("B")
				set := s.KnownSet("B", rd.Sessions())
				dst := make([]byte, PageSize)
				if set.Len() != rd.Pages() {
					errs <- fmt.Errorf("set %d pages, reader %d", set.Len(), rd.Pages())
				}
				p := testPage(uint64(w*10000 + k*1000))
				if rd.Pages() > 0 && set.Known(hashOf(p)) {
					if err := rd.KnownPage(hashOf(p), dst); err != nil || !bytes.Equal(dst, p) {
						errs <- fmt.Errorf("read back: %v", err)
					}
				}
				rd.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := s.Stats(); st.Bytes > st.Limit || st.Sessions == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// The recorder's hot path and the set's lookups allocate nothing.
func TestHotPathsAllocateNothing(t *testing.T) {
	if testing.CoverMode() != "" {
		t.Skip("coverage counters allocate")
	}
	s := open(t, t.TempDir(), 0)
	defer s.Close()
	const n = 2048
	pages := make([][]byte, n)
	hashes := make([]pagestage.PageHash, n)
	for i := range pages {
		pages[i] = testPage(uint64(i))
		hashes[i] = hashOf(pages[i])
	}
	r, err := s.Record("B", "alloc", RecordOptions{ExpectPages: 2 * n})
	if err != nil {
		t.Fatal(err)
	}
	next := 0
	if a := testing.AllocsPerRun(4, func() {
		for i := range n / 4 {
			r.ObservePage(hashes[(next+i)%n], pages[(next+i)%n])
		}
		next += n / 4
	}); a != 0 {
		t.Errorf("ObservePage: %v allocations per %d pages", a, n/4)
	}
	r.Finish(true)
	if err := r.Wait(); err != nil {
		t.Fatal(err)
	}
	set := s.KnownSet("B", s.Held("B"))
	if set.Len() != n {
		t.Fatalf("set of %d pages, want %d", set.Len(), n)
	}
	if a := testing.AllocsPerRun(4, func() {
		for _, h := range hashes {
			if !set.Known(h) {
				panic("page missing")
			}
		}
	}); a != 0 {
		t.Errorf("Known: %v allocations per %d lookups", a, n)
	}
}
