package pagestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pagestage"
)

func seedMeta() []byte {
	return appendMeta(nil, Meta{Peer: "host-b.example", ID: "h0123456789abcdef", Committed: time.Unix(1732500000, 123456789),
		Pages: 42, Digest: pagestage.PageHash{Hi: 0x0123456789abcdef, Lo: 0xfedcba9876543210}})
}

// FuzzParseMeta: no panic; anything accepted is the canonical form of
// exactly one Meta (formatting it again and parsing gives the same Meta),
// and every rejection wraps ErrCorrupt.
func FuzzParseMeta(f *testing.F) {
	good := seedMeta()
	f.Add(good)
	f.Add([]byte{})
	f.Add([]byte("\n"))
	f.Add(bytes.Replace(good, []byte("pages 42"), []byte("pages 0"), 1))
	f.Add(bytes.Replace(good, []byte(`"host-b.example"`), []byte(`"a\"b\x00\u00e9"`), 1))
	f.Add(bytes.Replace(good, []byte("pages 42"), []byte("pages 18446744073709551615"), 1))
	f.Add(good[:len(good)-1])
	f.Add(append(good, good...))
	f.Add(bytes.ToUpper(good))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMeta(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			return
		}
		again := appendMeta(nil, m)
		m2, err := parseMeta(again)
		if err != nil || !sameMeta(m, m2) {
			t.Fatalf("accepted %q as %+v; its canonical form %q parses to %+v, %v", b, m, again, m2, err)
		}
		if m.Pages == 0 || m.Pages > maxPages || m.Peer == "" {
			t.Fatalf("accepted out-of-range meta %+v", m)
		}
	})
}

func TestMetaRoundTripAndRejects(t *testing.T) {
	good := seedMeta()
	m, err := parseMeta(good)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(appendMeta(nil, m), good) {
		t.Fatalf("round trip changed the meta:\n%s\n%s", good, appendMeta(nil, m))
	}
	for _, bad := range []string{
		strings.Replace(string(good), "dwcp-pagestore-session 1", "dwcp-pagestore-session 2", 1),
		strings.Replace(string(good), "peer ", "peer  ", 1),
		strings.Replace(string(good), `"host-b.example"`, `host-b.example`, 1),
		strings.Replace(string(good), `"host-b.example"`, `""`, 1),
		strings.Replace(string(good), "session h0", "session ../h0", 1),
		strings.Replace(string(good), "committed 1", "committed -1", 1),
		strings.Replace(string(good), "pages 42", "pages 0", 1),
		strings.Replace(string(good), "pages 42", "pages 1099511627777", 1),
		strings.Replace(string(good), "index 0123", "index 0X23", 1),
		strings.Replace(string(good), "index 0123456789abcdef", "index 0123456789ABCDEF", 1),
		strings.Replace(string(good), "\nindex", "\nextra 1\nindex", 1),
		string(good) + "\n",
		string(good[:len(good)-1]),
		string(good) + strings.Repeat("x", maxMetaBytes),
	} {
		if _, err := parseMeta([]byte(bad)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("accepted %q: %v", bad, err)
		}
	}
}

// FuzzParseIndex: an index is accepted only with the length and digest its
// meta names, and then yields exactly its hashes in order.
func FuzzParseIndex(f *testing.F) {
	var idx []byte
	for i := range uint64(4) {
		idx = appendHash(idx, hashOf(testPage(i)))
	}
	f.Add(idx, uint64(4), true)
	f.Add(idx[:40], uint64(4), true)
	f.Add(idx, uint64(3), true)
	f.Add(idx, uint64(4), false)
	f.Add([]byte{}, uint64(0), true)
	f.Add(idx, uint64(1)<<62, true)
	f.Fuzz(func(t *testing.T, b []byte, pages uint64, rightDigest bool) {
		m := Meta{Pages: pages, Digest: indexDigest(b)}
		if !rightDigest {
			m.Digest.Lo++
		}
		var got []byte
		n := uint64(0)
		err := parseIndex(b, m, func(p uint64, h pagestage.PageHash) {
			if p != n {
				t.Fatalf("page %d reported as %d", n, p)
			}
			n++
			got = appendHash(got, h)
		})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error without ErrCorrupt: %v", err)
			}
			if n != 0 {
				t.Fatalf("%d hashes reported before an error", n)
			}
			return
		}
		if !rightDigest || uint64(len(b)) != pages*hashSize || !bytes.Equal(got, b) {
			t.Fatalf("accepted %d bytes as %d pages (right digest %v), reported %d bytes", len(b), pages, rightDigest, len(got))
		}
	})
}

// FuzzSessionFiles puts fuzzed files in a session directory, opens the
// store and uses the session through a reader and a set: nothing panics,
// whatever fails is reported as corrupt and deleted, and a page the reader
// serves is always the page its hash names.
func FuzzSessionFiles(f *testing.F) {
	var index, data []byte
	for i := range uint64(3) {
		p := testPage(i)
		index = appendHash(index, hashOf(p))
		data = append(data, p...)
	}
	meta := appendMeta(nil, Meta{Peer: "B", ID: "fz", Committed: time.Unix(1, 0), Pages: 3, Digest: indexDigest(index)})
	f.Add(meta, index, data)
	f.Add(meta, index[:32], data)
	f.Add(meta, index, data[:2*PageSize])
	dup := append(append([]byte{}, index[:32]...), index[:16]...)
	f.Add(appendMeta(nil, Meta{Peer: "B", ID: "fz", Committed: time.Unix(1, 0), Pages: 3, Digest: indexDigest(dup)}), dup, data)
	bad := bytes.Clone(data)
	bad[PageSize+1] ^= 1
	f.Add(meta, index, bad)
	f.Fuzz(func(t *testing.T, meta, index, data []byte) {
		dir := t.TempDir()
		sd := filepath.Join(dir, "s-00000000000000ff")
		if err := os.Mkdir(sd, 0o700); err != nil {
			t.Fatal(err)
		}
		for name, b := range map[string][]byte{metaName: meta, indexName: index, dataName: data} {
			if err := os.WriteFile(filepath.Join(sd, name), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		m, merr := parseMeta(meta)
		held := s.Held(m.Peer)
		if merr != nil && len(held) != 0 {
			t.Fatalf("a session with a bad meta is held: %v", merr)
		}
		if len(held) == 0 {
			if _, err := os.Stat(sd); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("rejected session left on disk: %v", err)
			}
			return
		}
		r := s.OpenReader(m.Peer)
		set := s.KnownSet(m.Peer, held)
		for _, p := range append(r.Problems(), set.Problems()...) {
			if !errors.Is(p, ErrCorrupt) {
				t.Fatalf("problem without ErrCorrupt: %v", p)
			}
		}
		dst := make([]byte, PageSize)
		for i := 0; i+hashSize <= len(index); i += hashSize {
			h := hashFrom(index[i:])
			if err := r.KnownPage(h, dst); err == nil && hashOf(dst) != h {
				t.Fatalf("reader served a page hashing to %v for %v", hashOf(dst), h)
			} else if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownPage) {
				t.Fatalf("read error without a sentinel: %v", err)
			}
		}
		r.Close()
	})
}
