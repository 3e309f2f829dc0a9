package qemustream

import (
	"bytes"
	"io"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

// TestLiveYieldsEverythingBeforeBlocking feeds a stream in pieces through a
// pipe and checks that, in Live mode, the reader hands out every byte of a
// complete piece before it blocks for the next one: a relay must not hold
// back bytes the source QEMU already wrote.
func TestLiveYieldsEverythingBeforeBlocking(t *testing.T) {
	stream := streamtest.Generate(streamtest.Config{Seed: 3, DirtyPasses: 2, DirtyPages: 20, Devices: 2}).Bytes()
	// Cut points: the end of the stream and two points inside the device
	// state (opaque rest), where a live source pauses for the return path.
	cuts := []int{len(stream) - 200, len(stream) - 37, len(stream)}
	pr, pw := io.Pipe()
	r := NewReader(pr, Options{Live: true})
	got := make(chan []byte)
	go func() {
		defer close(got)
		for {
			it, err := r.Next()
			if err != nil {
				return
			}
			got <- append([]byte(nil), it.Bytes...)
		}
	}()
	var out bytes.Buffer
	prev := 0
	for _, cut := range cuts {
		go pw.Write(stream[prev:cut])
		for out.Len() < cut {
			b, ok := <-got
			if !ok {
				t.Fatalf("reader ended at %d of %d bytes", out.Len(), cut)
			}
			out.Write(b)
		}
		if out.Len() != cut {
			t.Fatalf("reader handed out %d bytes, the source had written %d", out.Len(), cut)
		}
		prev = cut
	}
	pw.Close()
	for b := range got {
		out.Write(b)
	}
	if !bytes.Equal(out.Bytes(), stream) {
		t.Fatal("not byte-exact")
	}
}
