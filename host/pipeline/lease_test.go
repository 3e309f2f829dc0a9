package pipeline

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dwcp/dwcp/host/qemustream/streamtest"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
)

// checkedLeaser is a real codec offering codec.Leaser the way a plugin
// codec does, with private memory standing in for the shared slot, and
// checking how the pipeline uses it: how many blocks were encoded or
// decoded where they were built (in place), how many Buffers are still
// out, and any use after Release. Release poisons the Buffer's memory, so
// a pipeline that read a batch or an output after releasing it would
// deliver wrong bytes and fail the stream's digest.
type checkedLeaser struct {
	codec.Codec
	leased  atomic.Int64
	out     atomic.Int64
	inPlace atomic.Int64
	copied  atomic.Int64
	misuse  atomic.Int64
}

func (l *checkedLeaser) Lease(size int) codec.Buffer {
	l.leased.Add(1)
	l.out.Add(1)
	return &checkedBuffer{l: l, in: make([]byte, 0, size), out: make([]byte, 0, size+size/8+1024)}
}

type checkedBuffer struct {
	l        *checkedLeaser
	in, out  []byte
	released bool
}

func (b *checkedBuffer) Input() []byte {
	if b.released {
		b.l.misuse.Add(1)
		return nil
	}
	return b.in[:0]
}

func (b *checkedBuffer) count(src []byte) {
	if len(src) > 0 && &src[0] == &b.in[:1][0] {
		b.l.inPlace.Add(1)
	} else {
		b.l.copied.Add(1)
	}
}

func (b *checkedBuffer) Encode(src []byte, level int) ([]byte, error) {
	if b.released {
		b.l.misuse.Add(1)
		return nil, errors.New("encode after release")
	}
	b.count(src)
	out, err := b.l.Codec.Encode(b.out[:0], src, level)
	b.out = out[:0]
	return out, err
}

func (b *checkedBuffer) Decode(src []byte, maxSize int) ([]byte, error) {
	if b.released {
		b.l.misuse.Add(1)
		return nil, errors.New("decode after release")
	}
	b.count(src)
	out, err := b.l.Codec.Decode(b.out[:0], src, maxSize)
	b.out = out[:0]
	return out, err
}

func (b *checkedBuffer) Release() {
	if b.released {
		b.l.misuse.Add(1)
		return
	}
	b.released = true
	for i := range b.in[:cap(b.in)] {
		b.in[:cap(b.in)][i] = 0xEE
	}
	for i := range b.out[:cap(b.out)] {
		b.out[:cap(b.out)][i] = 0xEE
	}
	b.l.out.Add(-1)
}

func (l *checkedLeaser) check(t *testing.T, what string, wantInPlace bool) {
	t.Helper()
	if n := l.out.Load(); n != 0 {
		t.Errorf("%s: %d Buffers never released", what, n)
	}
	if n := l.misuse.Load(); n != 0 {
		t.Errorf("%s: %d uses of released Buffers", what, n)
	}
	if wantInPlace && l.inPlace.Load() == 0 {
		t.Errorf("%s: no block was coded where it was built (%d copied)", what, l.copied.Load())
	}
}

// TestLeasedBatchesRoundTrip: with codecs that lend memory, the source
// builds batches in it and encodes them in place, the destination decodes
// in place and rebuilds from there, every Buffer is released exactly once
// and never touched afterwards, and the stream arrives byte for byte, for
// raw and page-stage streams, whatever the policy picks per batch.
func TestLeasedBatchesRoundTrip(t *testing.T) {
	random := make([]byte, 3<<20+12345)
	rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 60000)
	qemu := streamtest.Generate(streamtest.Config{Seed: 11, DirtyPasses: 6, DirtyPages: 80, FinalDirty: 10, Devices: 3}).Bytes()
	policies := map[string]func() Policy{
		"zstd": func() Policy { return FixedPolicy{Codec: 1, Level: 2} },
		"s2":   func() Policy { return FixedPolicy{Codec: 2, Level: 1} },
		"alternating": func() Policy {
			return &cyclePolicy{choices: []Choice{{Codec: 1, Level: 1}, {Codec: 2, Level: 1}, {}, {Codec: 3, Level: 1}}}
		},
	}
	for _, in := range []struct {
		name  string
		data  []byte
		pages bool
	}{{"random", random, false}, {"text", text, false}, {"qemu-pages", qemu, true}} {
		for pname, policy := range policies {
			t.Run(in.name+"/"+pname, func(t *testing.T) {
				srcZ := &checkedLeaser{Codec: zstdcodec.New()}
				srcS := &checkedLeaser{Codec: s2codec.New()}
				dstZ := &checkedLeaser{Codec: zstdcodec.New()}
				dstS := &checkedLeaser{Codec: s2codec.New()}
				// Codec 3 is an ordinary in-process codec beside them.
				src := []Codec{{ID: 1, Algorithm: "zstd", Codec: srcZ}, {ID: 2, Algorithm: "s2", Codec: srcS}, {ID: 3, Algorithm: "s2-linked", Codec: s2codec.New()}}
				dst := map[string]codec.Codec{"zstd": dstZ, "s2": dstS, "s2-linked": s2codec.New()}
				cfg := SourceConfig{Codecs: src, Policy: policy(), BatchBytes: 128 << 10, CheckpointBytes: 1 << 20}
				dcfg := DestConfig{Codecs: dst}
				if in.pages {
					cfg.PageStage, dcfg.PageStage = DefaultPageStage(), PageStageDecoder
				}
				r := transfer(t, bytes.NewReader(in.data), cfg, dcfg, nil)
				if r.srcErr != nil || r.dstErr != nil {
					t.Fatalf("send: %v, receive: %v", r.srcErr, r.dstErr)
				}
				if !bytes.Equal(r.out.Bytes(), in.data) {
					t.Fatalf("destination got %d bytes, want %d identical", r.out.Len(), len(in.data))
				}
				// The chosen codec codes in place on the source, and on
				// the destination unless nothing compressed (random data
				// is stored).
				srcUsed, dstUsed := map[string]*checkedLeaser{"zstd": srcZ, "s2": srcS}[pname], map[string]*checkedLeaser{"zstd": dstZ, "s2": dstS}[pname]
				for _, l := range []*checkedLeaser{srcZ, srcS, dstZ, dstS} {
					l.check(t, pname, l == srcUsed || (l == dstUsed && in.name != "random"))
				}
				// Alternating, each batch is built in a Buffer of the
				// codec chosen for the one before, so it is never coded
				// in place: those batches took the copying path.
				if pname == "alternating" && (srcZ.leased.Load() == 0 || srcS.leased.Load() == 0 || srcZ.inPlace.Load()+srcS.inPlace.Load() != 0) {
					t.Errorf("alternating: leased %d+%d Buffers, coded %d+%d in place; want leases and none in place",
						srcZ.leased.Load(), srcS.leased.Load(), srcZ.inPlace.Load(), srcS.inPlace.Load())
				}
			})
		}
	}
}

// cyclePolicy picks its choices in turn, one per batch.
type cyclePolicy struct {
	mu      sync.Mutex
	choices []Choice
	n       int
}

func (p *cyclePolicy) Choose() Choice {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.choices[p.n%len(p.choices)]
	p.n++
	return c
}

func (p *cyclePolicy) Observe(BatchResult) {}

// TestLeasedBatchEncodeFailure: a codec whose Buffer fails mid-stream ends
// the session with the codec's error, and every Buffer is still released.
func TestLeasedBatchEncodeFailure(t *testing.T) {
	l := &checkedLeaser{Codec: failingCodec{Codec: s2codec.New(), after: 5, n: new(atomic.Int64)}}
	input := bytes.Repeat([]byte("0123456789abcdef"), 1<<17) // 2 MiB
	r := transfer(t, bytes.NewReader(input), SourceConfig{Codecs: []Codec{{ID: 1, Algorithm: "s2", Codec: l}}, BatchBytes: 64 << 10},
		DestConfig{Codecs: map[string]codec.Codec{"s2": s2codec.New()}}, nil)
	if !errors.Is(r.srcErr, errCodecBroke) {
		t.Fatalf("send: %v, want the codec's error", r.srcErr)
	}
	l.check(t, "failing codec", false)
}

var errCodecBroke = errors.New("codec broke")

// failingCodec fails every Encode and Decode after its first few.
type failingCodec struct {
	codec.Codec
	after int
	n     *atomic.Int64
}

func (f failingCodec) Encode(dst, src []byte, level int) ([]byte, error) {
	if f.n.Add(1) > int64(f.after) {
		return dst, errCodecBroke
	}
	return f.Codec.Encode(dst, src, level)
}

func (f failingCodec) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	if f.n.Add(1) > int64(f.after) {
		return dst, errCodecBroke
	}
	return f.Codec.Decode(dst, src, maxSize)
}

// endless is a live input that never ends by itself: it stops only when
// the pipeline stops reading (the test then closes it).
func endless(t *testing.T) *io.PipeReader {
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := bytes.Repeat([]byte("dirty page of a guest being migrated\n"), 2000)
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		pr.CloseWithError(errors.New("test over"))
		<-done
	})
	return pr
}

// TestCodecFailureStopsLiveStream: when a codec fails on either side
// while the input keeps flowing, the session ends with the codec's error
// at once, instead of reading (or receiving) the rest of a live stream
// that nothing will deliver.
func TestCodecFailureStopsLiveStream(t *testing.T) {
	s2 := s2codec.New()
	broken := func() codec.Codec { return failingCodec{Codec: s2, after: 5, n: new(atomic.Int64)} }
	for _, side := range []string{"source", "destination"} {
		t.Run(side, func(t *testing.T) {
			src, dst := codec.Codec(s2), codec.Codec(s2)
			if side == "source" {
				src = &checkedLeaser{Codec: broken()}
			} else {
				dst = &checkedLeaser{Codec: broken()}
			}
			r := transfer(t, endless(t), SourceConfig{Codecs: []Codec{{ID: 1, Algorithm: "s2", Codec: src}}, BatchBytes: 64 << 10},
				DestConfig{Codecs: map[string]codec.Codec{"s2": dst}}, nil)
			failed := r.srcErr
			if side == "destination" {
				failed = r.dstErr
			}
			if !errors.Is(failed, errCodecBroke) {
				t.Fatalf("send: %v, receive: %v; want the %s to fail with the codec's error", r.srcErr, r.dstErr, side)
			}
			if r.srcErr == nil || r.dstErr == nil {
				t.Fatalf("send: %v, receive: %v; want both to end with an error", r.srcErr, r.dstErr)
			}
			for _, c := range []codec.Codec{src, dst} {
				if l, ok := c.(*checkedLeaser); ok {
					l.check(t, side, false)
				}
			}
		})
	}
}
