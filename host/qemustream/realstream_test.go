package qemustream

import (
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestRealStreams reads migration streams captured from a real QEMU guest
// (see host/internal/testguest) and checks byte-exact reconstruction. The
// streams are large and made on demand, so the test skips when there are
// none. DWCP_STREAMS names the directory; the default is /tmp/dwcp-streams.
func TestRealStreams(t *testing.T) {
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	if len(files) == 0 {
		t.Skipf("no captured streams in %s", dir)
	}
	for _, name := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			f, err := os.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				t.Fatal(err)
			}
			// Hash the items and the file instead of holding either: the
			// streams are hundreds of MiB.
			items, whole := sha256.New(), sha256.New()
			r := NewReader(io.TeeReader(f, whole), Options{})
			var n, pages int64
			for {
				it, err := r.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d bytes: %v", n, err)
				}
				if it.Offset != n {
					t.Fatalf("item at %d, want %d", it.Offset, n)
				}
				if it.Kind == Page {
					pages++
				}
				items.Write(it.Bytes)
				n += int64(len(it.Bytes))
			}
			if n != fi.Size() || !bytes.Equal(items.Sum(nil), whole.Sum(nil)) {
				t.Fatalf("reconstruction differs: %d of %d bytes", n, fi.Size())
			}
			st := r.Stats()
			t.Logf("%s: %d bytes, machine %q, blocks %d, %d page items (%d MiB), records %v, passes %d, "+
				"opaque rest from %d (%s), EOF %v, vmdesc %d", filepath.Base(name), n, st.MachineType, len(st.Blocks),
				pages, st.PageBytes>>20, st.Records, st.RAMPasses, st.OpaqueRestFrom, st.OpaqueRestReason, st.EOF,
				st.VMDescriptionLen)
			for _, b := range st.Blocks {
				t.Logf("  block %q length %#x", b.Name, b.Length)
			}
		})
	}
}
