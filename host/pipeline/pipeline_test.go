package pipeline

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/msgpipe"
	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/internal/testguest"
	"github.com/dwcp/dwcp/host/qemustream/streamtest"
	"github.com/dwcp/dwcp/host/wire"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memPipe is the pipeline's contract with its transport, without the
// network.
func memPipe() (*msgpipe.End, *msgpipe.End) { return msgpipe.New(8) }

func codecsFor() ([]Codec, map[string]codec.Codec) {
	z, s := zstdcodec.New(), s2codec.New()
	return []Codec{{ID: 1, Algorithm: "zstd", Codec: z}, {ID: 2, Algorithm: "s2", Codec: s}},
		map[string]codec.Codec{"zstd": z, "s2": s}
}

type result struct {
	out            bytes.Buffer
	hello          *streamv1.Hello
	src, dst       Summary
	srcErr, dstErr error
}

// transfer runs Send and Receive against each other.
func transfer(t *testing.T, input io.Reader, srcCfg SourceConfig, dstCfg DestConfig, tamper func([]byte) []byte) *result {
	t.Helper()
	a, b := memPipe()
	a.Tamper = tamper
	defer a.Close()
	r := &result{}
	outMu := sync.Mutex{}
	dstCfg.Accept = func(_ context.Context, h *streamv1.Hello) (io.Writer, io.Reader, error) {
		return writerFunc(func(p []byte) (int, error) {
			outMu.Lock()
			defer outMu.Unlock()
			return r.out.Write(p)
		}), nil, nil
	}
	// A guard against a hang, not a speed limit: a stream of a few hundred
	// MB under -race on a loaded 2-core machine took 55-60 s, and a fixed
	// 60 s cut it off. Up to the test binary's own deadline.
	timeout := 5 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = max(time.Until(d)-30*time.Second, time.Minute)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.hello, r.dst, r.dstErr = Receive(ctx, b, dstCfg, nil)
		if r.dstErr != nil {
			b.Close()
		}
	}()
	r.src, r.srcErr = Send(ctx, input, a, srcCfg, nil)
	if r.srcErr != nil {
		a.Close()
	}
	wg.Wait()
	return r
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestRawStreamsRoundTripByteExact(t *testing.T) {
	srcCodecs, dstCodecs := codecsFor()
	random := make([]byte, 3<<20+12345)
	rand.Read(random)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), 100000)
	for name, input := range map[string][]byte{"empty": nil, "one byte": {42}, "random": random, "text": text} {
		for _, choice := range []Choice{{}, {Codec: 1, Level: 2}, {Codec: 2, Level: 1}} {
			t.Run(name, func(t *testing.T) {
				r := transfer(t, bytes.NewReader(input), SourceConfig{Codecs: srcCodecs, Policy: FixedPolicy(choice), BatchBytes: 256 << 10, CheckpointBytes: 1 << 20},
					DestConfig{Codecs: dstCodecs}, nil)
				if r.srcErr != nil || r.dstErr != nil {
					t.Fatalf("send: %v, receive: %v", r.srcErr, r.dstErr)
				}
				if !bytes.Equal(r.out.Bytes(), input) {
					t.Fatalf("destination got %d bytes, want %d identical", r.out.Len(), len(input))
				}
				if r.src.QEMU || r.src.BytesIn != uint64(len(input)) || r.dst.BytesIn != uint64(len(input)) {
					t.Fatalf("summaries: src %+v dst %+v", r.src, r.dst)
				}
				if name == "text" && choice.Codec != 0 && r.src.Ratio() < 5 {
					t.Fatalf("text compressed only %.2fx", r.src.Ratio())
				}
				if name == "random" && r.src.WireBytes > uint64(len(input))+uint64(len(input))/100 {
					t.Fatalf("random input grew to %d wire bytes", r.src.WireBytes)
				}
			})
		}
	}
}

func TestQEMUStreamIsRecognisedAndRoundTrips(t *testing.T) {
	srcCodecs, dstCodecs := codecsFor()
	stream := streamtest.Generate(streamtest.Config{Seed: 7, DirtyPasses: 6, DirtyPages: 80, FinalDirty: 10, Devices: 3, ReturnPath: true}).Bytes()
	var wire [2]uint64
	for i, ps := range []*PageStage{nil, DefaultPageStage()} {
		cfg := SourceConfig{Codecs: srcCodecs, BatchBytes: 64 << 10}
		if ps != nil {
			cfg.PageStage = ps
		}
		r := transfer(t, bytes.NewReader(stream), cfg, DestConfig{Codecs: dstCodecs, PageStage: PageStageDecoder}, nil)
		if r.srcErr != nil || r.dstErr != nil {
			t.Fatalf("page stage %v: send: %v, receive: %v", ps != nil, r.srcErr, r.dstErr)
		}
		if !bytes.Equal(r.out.Bytes(), stream) {
			t.Fatalf("page stage %v: QEMU stream not reproduced byte for byte", ps != nil)
		}
		if !r.src.QEMU || r.hello.Kind != streamv1.StreamKind_STREAM_KIND_QEMU {
			t.Fatal("QEMU stream not recognised")
		}
		if ps != nil && (r.src.Pages.Pages == 0 || r.src.Pages.Delta+r.src.Pages.Duplicate == 0) {
			t.Fatalf("page stage saw pages %+v, want re-sent pages sent as deltas or references", r.src.Pages)
		}
		wire[i] = r.src.WireBytes
	}
	if wire[1] >= wire[0] {
		t.Fatalf("page stage did not reduce the bytes on the wire: %d with, %d without", wire[1], wire[0])
	}
	t.Logf("wire bytes: %d without page stage, %d with (%.1f%% less)", wire[0], wire[1], 100*(1-float64(wire[1])/float64(wire[0])))
}

func TestTamperedFramesNeverReachTheOutput(t *testing.T) {
	srcCodecs, dstCodecs := codecsFor()
	input := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	cases := map[string]func(n int, f []byte) []byte{
		"flipped batch byte": func(n int, f []byte) []byte {
			if wire.TypeOf(f) == wire.TypeBatch && n == 3 {
				f[len(f)/2] ^= 0x40
			}
			return f
		},
		"dropped batch": func(n int, f []byte) []byte {
			if wire.TypeOf(f) == wire.TypeBatch && n == 3 {
				return nil
			}
			return f
		},
		"wrong digest": func(n int, f []byte) []byte {
			if wire.TypeOf(f) == wire.TypeCheckpoint {
				f[len(f)-1] ^= 1
			}
			return f
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			n := 0
			r := transfer(t, bytes.NewReader(input), SourceConfig{Codecs: srcCodecs, Policy: FixedPolicy{}, BatchBytes: 64 << 10, CheckpointBytes: 256 << 10},
				DestConfig{Codecs: dstCodecs}, func(f []byte) []byte { n++; return mutate(n, f) })
			if r.dstErr == nil || r.srcErr == nil {
				t.Fatalf("tampering went unnoticed: send %v, receive %v", r.srcErr, r.dstErr)
			}
			if !errors.Is(r.srcErr, ErrAborted) {
				t.Fatalf("source error %v, want ErrAborted", r.srcErr)
			}
			// Whatever was delivered is a verified prefix.
			if !bytes.HasPrefix(input, r.out.Bytes()) || r.out.Len() == len(input) {
				t.Fatalf("destination delivered %d bytes that are not a strict verified prefix", r.out.Len())
			}
			t.Logf("send: %v\nreceive: %v\ndelivered %d verified bytes", r.srcErr, r.dstErr, r.out.Len())
		})
	}
}

func TestDestinationWithoutCodecRefuses(t *testing.T) {
	srcCodecs, _ := codecsFor()
	r := transfer(t, bytes.NewReader([]byte("hello")), SourceConfig{Codecs: srcCodecs}, DestConfig{Codecs: map[string]codec.Codec{}}, nil)
	if !errors.Is(r.srcErr, ErrAborted) || r.dstErr == nil || r.out.Len() != 0 {
		t.Fatalf("send %v receive %v out %d", r.srcErr, r.dstErr, r.out.Len())
	}
}

// stallingReader hands out its data in pieces with pauses, like a live
// migration stream; the destination must see each piece before the next
// one is produced (nothing waits in a half-full batch).
func TestStalledInputIsFlushedAndVerified(t *testing.T) {
	// Pieces smaller than a batch, and pieces that fill a batch exactly
	// (closed by size just before the pause: it still needs a checkpoint).
	for _, piece := range []int{1000, 64 << 10} {
		t.Run(fmt.Sprint(piece), func(t *testing.T) { testStalledInput(t, piece) })
	}
}

func testStalledInput(t *testing.T, pieceSize int) {
	srcCodecs, dstCodecs := codecsFor()
	pr, pw := io.Pipe()
	a, b := memPipe()
	defer a.Close()
	var mu sync.Mutex
	var got bytes.Buffer
	arrived := make(chan int, 16)
	dst := DestConfig{Codecs: dstCodecs, Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) {
		return writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			got.Write(p)
			arrived <- got.Len()
			return len(p), nil
		}), nil, nil
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	var srcErr, dstErr error
	go func() { defer wg.Done(); _, _, dstErr = Receive(ctx, b, dst, nil) }()
	go func() {
		defer wg.Done()
		_, srcErr = Send(ctx, pr, a, SourceConfig{Codecs: srcCodecs, BatchBytes: 64 << 10, Kind: KindRaw}, nil)
	}()
	want := 0
	for i := 0; i < 5; i++ {
		piece := bytes.Repeat([]byte{byte('a' + i)}, pieceSize+i%2)
		if pieceSize == 64<<10 {
			piece = piece[:pieceSize]
		}
		if _, err := pw.Write(piece); err != nil {
			t.Fatal(err)
		}
		want += len(piece)
		for n := 0; n < want; {
			select {
			case n = <-arrived:
			case <-ctx.Done():
				t.Fatalf("piece %d never reached the destination (%d of %d bytes)", i, n, want)
			}
		}
	}
	pw.Close()
	wg.Wait()
	if srcErr != nil || dstErr != nil {
		t.Fatalf("send %v receive %v", srcErr, dstErr)
	}
}

// TestRealQEMUStreamsRoundTrip carries streams captured from a real QEMU 7.2
// guest (one pass, and a multi-pass live migration with re-sent pages)
// byte-exact, with and without the page stage.
func TestRealQEMUStreamsRoundTrip(t *testing.T) {
	srcCodecs, dstCodecs := codecsFor()
	for _, name := range []string{"single.bin", "live.bin"} {
		data, err := os.ReadFile(testguest.StreamPath(t, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range []*PageStage{nil, DefaultPageStage()} {
			cfg := SourceConfig{Codecs: srcCodecs, Policy: FixedPolicy{Codec: 1, Level: 2}}
			if ps != nil {
				cfg.PageStage = ps
			}
			r := transfer(t, bytes.NewReader(data), cfg, DestConfig{Codecs: dstCodecs, PageStage: PageStageDecoder}, nil)
			if r.srcErr != nil || r.dstErr != nil {
				t.Fatalf("%s page stage %v: send %v receive %v", name, ps != nil, r.srcErr, r.dstErr)
			}
			if !bytes.Equal(r.out.Bytes(), data) {
				t.Fatalf("%s page stage %v: not byte-exact", name, ps != nil)
			}
			if !r.src.QEMU {
				t.Fatalf("%s not recognised as a QEMU stream", name)
			}
			t.Logf("%s page stage %v: %d -> %d wire bytes (%.2fx), pages %+v", name, ps != nil, len(data), r.src.WireBytes, r.src.Ratio(), r.src.Pages)
		}
	}
}
