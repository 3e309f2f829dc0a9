package pagestage

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream"
)

// Real QEMU migration streams, captured by the test-guest tooling; the tests
// and benchmarks that use them skip when there are none.
func realStreams(tb testing.TB) []string {
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.bin"))
	if len(files) == 0 {
		tb.Skipf("no captured streams in %s", dir)
	}
	return files
}

// forEachItem splits a captured stream with host/qemustream and hands every
// item to fn; the item's bytes are valid only during the call.
func forEachItem(tb testing.TB, path string, fn func(it qemustream.Item)) {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := qemustream.NewReader(bufio.NewReaderSize(f, 1<<20), qemustream.Options{})
	for {
		it, err := r.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			tb.Fatalf("%s: %v", path, err)
		}
		fn(it)
	}
}

// streamSession encodes one captured stream in batches of batchBytes and
// calls batch with each batch and the stream bytes it stands for.
func streamSession(tb testing.TB, path string, opts Options, batchBytes int, batch func(b Batch, raw []byte)) Stats {
	tb.Helper()
	e, err := NewEncoder(opts)
	if err != nil {
		tb.Fatal(err)
	}
	var b Batch
	var raw []byte
	flush := func() {
		if err := e.Flush(&b); err != nil {
			tb.Fatal(err)
		}
		batch(b, raw)
		raw = raw[:0]
	}
	forEachItem(tb, path, func(it qemustream.Item) {
		raw = append(raw, it.Bytes...)
		if it.Kind == qemustream.Page {
			e.AddPage(it.Block, it.Addr, it.Bytes)
		} else {
			e.AddOpaque(it.Bytes)
		}
		if e.Pending() >= batchBytes {
			flush()
		}
	})
	flush()
	return e.Stats()
}

func TestRealStreamsRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("reads hundreds of MB")
	}
	paths := realStreams(t)
	if raceEnabled {
		paths = paths[:1]
	}
	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			d := NewDecoder(DecoderOptions{})
			var out []byte
			var n int
			s := streamSession(t, path, Options{}, 1<<20, func(b Batch, raw []byte) {
				var err error
				if out, err = d.Decode(out[:0], b); err != nil {
					t.Fatalf("batch at stream offset %d: %v", n, err)
				}
				if !bytes.Equal(out, raw) {
					t.Fatalf("batch at stream offset %d decoded to other bytes", n)
				}
				n += len(raw)
			})
			if fi, err := os.Stat(path); err != nil || fi.Size() != int64(n) {
				t.Fatalf("decoded %d bytes of %v (%v)", n, fi.Size(), err)
			}
			t.Log(s)
		})
	}
}
