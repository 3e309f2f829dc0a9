package shm

import (
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Every benchmark measures its own baseline in the same run: the same
// handler called in this process, writing straight into the caller's buffer,
// which is what the host pays when the codec is linked in instead of running
// in a plugin. It reports inproc-MB/s and the ratio shm/inproc (1.0 = the
// plugin boundary is free).

func BenchmarkCallEcho(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		for _, callers := range []int{1, 4} {
			b.Run(fmt.Sprintf("size=%dKiB/callers=%d", size>>10, callers), func(b *testing.B) {
				in := make([]byte, size)
				fillText(in, 1)
				benchCall(b, opEcho, in, size, callers, testHandler)
			})
		}
	}
}

// BenchmarkCallFlate puts a real codec (compress/flate, level 1) behind the
// channel: the per-call cost of the boundary against real work per byte.
func BenchmarkCallFlate(b *testing.B) {
	for _, callers := range []int{1, 2} {
		b.Run(fmt.Sprintf("size=64KiB/callers=%d", callers), func(b *testing.B) {
			in := make([]byte, 64<<10)
			fillText(in, 2)
			fh := newFlateHandler()
			benchCall(b, 0, in, len(in)+len(in)/8, callers, fh.handle)
		})
	}
}

func benchCall(b *testing.B, op uint32, in []byte, maxOut, callers int, h Handler) {
	c := startServe(b, ClientOptions{Slots: callers, SlotInput: len(in), SlotOutput: maxOut}, h, callers)
	ctx := context.Background()
	dst := make([][]byte, callers)
	for g := range dst {
		dst[g] = make([]byte, 0, maxOut)
	}
	// First touches of the arena fault its pages in; keep that out of the
	// timing (it is a one-off per Client, not a per-call cost).
	split(4*callers, callers, func(g int) {
		c.Call(ctx, op, 0, in, dst[g][:0], maxOut)
	})

	shmCall := func(g int) {
		var err error
		dst[g], err = c.Call(ctx, op, 0, in, dst[g][:0], maxOut)
		if err != nil {
			b.Error(err)
		}
	}
	baseCall := func(g int) {
		n, code, msg := h(op, 0, in, dst[g][:maxOut])
		if code != 0 {
			b.Error(msg)
		}
		dst[g] = dst[g][:n]
	}

	// The two are interleaved in rounds, so that load from other processes
	// on a shared machine falls on both sides of the ratio alike.
	const rounds = 32
	var base time.Duration
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	b.ResetTimer()
	for r, done := 0, 0; r < rounds; r++ {
		k := (b.N - done) / (rounds - r)
		done += k
		split(k, callers, shmCall)
		b.StopTimer()
		t0 := time.Now()
		split(k, callers, baseCall)
		base += time.Since(t0)
		b.StartTimer()
	}
	b.StopTimer()
	shm := b.Elapsed()

	mb := float64(b.N) * float64(len(in)) / 1e6
	b.ReportMetric(mb/base.Seconds(), "inproc-MB/s")
	b.ReportMetric(base.Seconds()/shm.Seconds(), "shm/inproc")
}

// split runs n calls of f over callers goroutines, f(g) on goroutine g; a
// single caller runs on the benchmark goroutine itself.
func split(n, callers int, f func(g int)) {
	if callers == 1 {
		for range n {
			f(0)
		}
		return
	}
	var wg sync.WaitGroup
	for g := range callers {
		k := n / callers
		if g < n%callers {
			k++
		}
		wg.Go(func() {
			for range k {
				f(g)
			}
		})
	}
	wg.Wait()
}

// fillText fills b with word-like, compressible bytes, so that the flate
// benchmark does realistic work (random bytes would be stored, not coded).
func fillText(b []byte, seed uint64) {
	words := []string{"page ", "migration ", "dirty ", "zero ", "qemu ", "ram ", "0x7f3a ", "block ", "\n"}
	r := rand.New(rand.NewPCG(seed, seed))
	for i := 0; i < len(b); {
		i += copy(b[i:], words[r.IntN(len(words))])
	}
}

// flateHandler compresses in into out with writers from a fixed free list
// (not a sync.Pool, which the GC empties: a fresh flate.Writer is ~1 MB), so
// it allocates nothing per call, like a real codec plugin would.
type flateHandler struct{ free chan *flateState }

type flateState struct {
	fw *flate.Writer
	w  sliceWriter
}

var errShortOutput = errors.New("output buffer too small")

// sliceWriter writes into a fixed buffer: the slot's output region.
type sliceWriter struct {
	b []byte
	n int
}

func (w *sliceWriter) Write(p []byte) (int, error) {
	if len(p) > len(w.b)-w.n {
		return 0, errShortOutput
	}
	w.n += copy(w.b[w.n:], p)
	return len(p), nil
}

func newFlateHandler() *flateHandler {
	const states = 4 // at least the most concurrent callers of any benchmark
	f := &flateHandler{free: make(chan *flateState, states)}
	for range states {
		st := &flateState{}
		st.fw, _ = flate.NewWriter(&st.w, flate.BestSpeed)
		f.free <- st
	}
	return f
}

func (f *flateHandler) handle(_ uint32, _ int64, in, out []byte) (int, uint32, string) {
	st := <-f.free
	defer func() { f.free <- st }()
	st.w = sliceWriter{b: out}
	st.fw.Reset(&st.w)
	_, err := st.fw.Write(in)
	if err == nil {
		err = st.fw.Close()
	}
	st.w.b = nil
	if err != nil {
		return 0, 1, err.Error()
	}
	return st.w.n, 0, ""
}
