package modes

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/sdk/codec"
)

// memoryLike makes n bytes that compress roughly like guest memory: runs
// of text-like records, zero runs and some random pages.
func memoryLike(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := strings.Fields("the quick migration of a running guest moves pages dirty clean zero kernel slab cache inode dentry buffer socket page table")
	var b bytes.Buffer
	for b.Len() < n {
		switch rng.IntN(10) {
		case 0:
			b.Write(make([]byte, 4096))
		case 1:
			p := make([]byte, 4096)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			b.Write(p)
		default:
			for range 64 {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(byte(' ' + rng.IntN(3)))
				b.WriteString(string(rune('0' + rng.IntN(10))))
			}
		}
	}
	return b.Bytes()[:n]
}

// TestControllerDrivesTheRealPipeline runs pipeline.Send and Receive over
// a 6 MB/s link with the controller as the policy and the real codecs:
// the stream arrives byte for byte, and the controller, starting at s2,
// finds the link is the bottleneck and compresses harder. (At 12 MB/s and
// 24 MiB the transfer took 1.5 s under the race detector in CI, too short
// for the controller's first decision.)
func TestControllerDrivesTheRealPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 24 MiB through real codecs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const rate = 6e6
	src, dst := memPipeQ(t, rate, time.Millisecond, 4)
	codecs := allCodecs()[:2] // zstd and s2
	path := Path{RTT: 2 * time.Millisecond, Bandwidth: rate, Source: "test"}
	settings, err := Plan(Hybrid, path, codecs, PlanConfig{Cores: 2})
	if err != nil {
		t.Fatal(err)
	}
	settings.Start = settings.Ladder[settings.Ladder.Index(pipeline.Choice{Codec: 2, Level: 1})].Choice
	ctl, err := NewController(ControllerConfig{Settings: settings, Path: path, Manual: true, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	in := memoryLike(32<<20, 1)
	byAlgo := map[string]codec.Codec{}
	for _, c := range codecs {
		byAlgo[c.Algorithm] = c.Codec
	}
	var out bytes.Buffer
	recv := make(chan error, 1)
	go func() {
		_, _, err := pipeline.Receive(ctx, dst, pipeline.DestConfig{
			Codecs: byAlgo, Workers: 2,
			Accept: func(context.Context, *streamv1.Hello) (io.Writer, io.Reader, error) { return &out, nil, nil },
		}, nil)
		recv <- err
	}()
	sum, err := pipeline.Send(ctx, bytes.NewReader(in), src, pipeline.SourceConfig{
		Codecs: codecs, Policy: ctl, Kind: pipeline.KindRaw, Workers: 2,
		BatchBytes: settings.BatchBytes, Mode: settings.Mode.String(),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-recv; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("destination got %d bytes, not the %d sent", out.Len(), len(in))
	}
	t.Logf("%d MiB in %v, ratio %.2f\n%s", len(in)>>20, sum.Elapsed, sum.Ratio(), ctl.Summary())
	// Harder, for the link (or, on a machine so busy that reading the
	// input is slowest, because the encoders have room).
	l := settings.Ladder
	if l.Index(ctl.Choose()) <= l.Index(settings.Start) {
		t.Errorf("on a 6 MB/s link the controller ended at %s", ctl.Status().Step)
	}
	for _, d := range ctl.Decisions() {
		if d.Kind == KindLevel && d.Reason == "" {
			t.Errorf("unexpected decision %v", d)
		}
	}
}
