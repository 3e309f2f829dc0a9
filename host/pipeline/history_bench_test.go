package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/codec"
)

// historyInput is the real stream of the test guest when it was captured,
// else a synthetic guest of 32 MiB.
func historyInput(b *testing.B) (string, []byte) {
	if !testing.Short() {
		if data, err := readStream(b, "single.bin"); err == nil {
			return "qemu-single", data
		}
	}
	mem := guestMemory(9)
	for range 3 {
		mem = append(mem, modify(guestMemory(uint64(len(mem))), 1)...)
	}
	return "synthetic", guestStream(mem)
}

// timedHop carries data from src to dst (either may be nil) with the page
// stage and zstd level 2, one worker on each end, and returns the time
// from the first byte read to the destination's confirmation.
func timedHop(b *testing.B, data []byte, src, dst *pagestore.Store, srcName, dstName string) (time.Duration, Summary) {
	z := zstdcodec.New()
	cfg := SourceConfig{Codecs: []Codec{{ID: 1, Algorithm: "zstd", Codec: z}}, Policy: FixedPolicy{Codec: 1, Level: 2}, Workers: 1,
		PageStage: DefaultPageStage(), ExpectedLength: uint64(len(data))}
	dcfg := DestConfig{Codecs: map[string]codec.Codec{"zstd": z}, PageStage: PageStageDecoder, Workers: 1,
		Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) { return io.Discard, nil, nil }}
	if src != nil {
		cfg.History = &History{Store: src, Peer: dstName}
	}
	if dst != nil {
		dcfg.History = &History{Store: dst, Peer: srcName}
	}
	a, c := memPipe()
	defer a.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	var dstErr error
	wg.Add(1)
	t0 := time.Now()
	go func() {
		defer wg.Done()
		_, _, dstErr = Receive(ctx, c, dcfg, nil)
	}()
	sum, err := Send(ctx, bytes.NewReader(data), a, cfg, nil)
	wg.Wait()
	d := time.Since(t0)
	if err != nil || dstErr != nil {
		b.Fatalf("send %v receive %v", err, dstErr)
	}
	return d, sum
}

// BenchmarkHistory measures what the page history costs and gains on the
// real data path, each against the same stream without history in the
// same run:
//   - record: both ends record a session that finds nothing known (the
//     first migration): "record/plain" is its time over the plain hop's;
//   - hit: the stream again between hosts that hold it (every page
//     known): "hit/plain" time, and "hit-wire/plain" bytes.
//
// Commits (fsync, meta) run in the background after each hop and are
// waited for outside the timed part.
func BenchmarkHistory(b *testing.B) {
	name, data := historyInput(b)
	b.Run(name, func(b *testing.B) {
		a := openStore(b, b.TempDir())
		defer a.Close()
		dst := openStore(b, b.TempDir())
		defer dst.Close()
		var plain, rec, hit time.Duration
		var plainWire, hitWire uint64
		i := 0
		for b.Loop() {
			i++
			d, sum := timedHop(b, data, nil, nil, "A", "B")
			plain += d
			plainWire += sum.WireBytes
			// New peer names each round: nothing is held with them yet.
			srcName, peer := fmt.Sprint("A", i), fmt.Sprint("B", i)
			d, _ = timedHop(b, data, a, dst, srcName, peer)
			rec += d
			b.StopTimer()
			waitHeld(b, a, peer, 1)
			waitHeld(b, dst, srcName, 1)
			b.StartTimer()
			d, sum = timedHop(b, data, a, dst, srcName, peer)
			hit += d
			hitWire += sum.WireBytes
			if sum.Pages.Known == 0 {
				b.Fatal("nothing known on the second hop")
			}
			b.StopTimer()
			waitHeld(b, a, peer, 2)
			b.StartTimer()
		}
		b.ReportMetric(float64(len(data))*float64(i)/plain.Seconds()/1e6, "plain-MB/s")
		b.ReportMetric(float64(rec)/float64(plain), "record/plain")
		b.ReportMetric(float64(hit)/float64(plain), "hit/plain")
		b.ReportMetric(float64(hitWire)/float64(plainWire), "hit-wire/plain")
	})
}
