package modes_test

import (
	"context"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/plugins/s2/s2codec"
	"github.com/dwcp/dwcp/plugins/zstd/zstdcodec"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// labCodecs are the codecs linked into the test: s2 as 1, zstd as 2.
func labCodecs() []pipeline.Codec {
	return []pipeline.Codec{{ID: 1, Algorithm: "s2", Codec: s2codec.New()}, {ID: 2, Algorithm: "zstd", Codec: zstdcodec.New()}}
}

// TestWANLabLossyTransferIsByteExact carries 24 MiB over the lab's
// internet-lossy profile (80 ms, 200 Mbit/s, 1 % loss each way) through the
// real transport and pipeline: it must arrive byte for byte.
func TestWANLabLossyTransferIsByteExact(t *testing.T) {
	prof, err := wanlab.LookupProfile("internet-lossy")
	if err != nil {
		t.Fatal(err)
	}
	lab := wanlab.NewTest(t, wanlab.Config{Profile: prof})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pair, err := modeslab.OpenSessions(ctx, lab, modeslab.SessionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer pair.Close()
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	data := p.Bytes(24<<20, 7)
	if _, err := modeslab.TransferBytes(ctx, pair, data, modeslab.TransferConfig{Codecs: labCodecs(),
		Policy: pipeline.FixedPolicy{Codec: 1, Level: 1}, BatchBytes: 256 << 10}); err != nil {
		t.Fatal(err)
	}
	st, _ := lab.LinkStats(lab.Host(0), lab.Host(1))
	if st.LossDrops == 0 {
		t.Fatalf("the lab dropped no packet: the test did not exercise loss (%+v)", st)
	}
	t.Logf("byte-exact through %d dropped packets (%d forwarded)", st.LossDrops, st.Forwarded)
}

// TestWANLabControllerFollowsLinkChange starts a transfer on a 1 Gbit/s,
// 100 ms path (the encoders are the bottleneck: the controller keeps a
// light step) and cuts the link to a twentieth mid-transfer: the link
// becomes the bottleneck and the controller must go heavier within a
// stated time (8 s) of the change.
func TestWANLabControllerFollowsLinkChange(t *testing.T) {
	if modes.RaceEnabled {
		t.Skip("the controller reacts to CPU speed, which -race distorts; make test runs this without -race")
	}
	prof, err := wanlab.LookupProfile("wan-100ms-1g")
	if err != nil {
		t.Fatal(err)
	}
	lab := wanlab.NewTest(t, wanlab.Config{Profile: prof})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	after := prof.Link()
	after.Rate /= 20
	const bound = 8 * time.Second
	path := modes.Path{RTT: prof.RTT, Bandwidth: float64(prof.Rate) / 8, Source: "config"}
	res, err := modeslab.LinkChange(ctx, lab, modeslab.LinkChangeConfig{
		Before: prof.Link(), After: after, ChangeAfter: 1200 * time.Millisecond, Watch: bound + time.Second, Toward: +1,
		Data: p.Bytes(32<<20, 3), Codecs: labCodecs(), Path: &path, Mode: modes.Hybrid,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started at %s; decisions:\n%s", res.StartStep, res.Summary)
	followed := res.LevelChange
	if followed == nil {
		// Staying put is right only at the mode's heaviest step: the link
		// got slower, so nothing heavier is left to take.
		if heaviest := res.Settings.Ladder[res.Settings.MaxStep].Name; res.FinalStep == heaviest {
			t.Logf("already at the heaviest step of the mode (%s) when the link fell: nothing to follow", heaviest)
			return
		}
		t.Fatalf("no level decision after the link fell to a twentieth (step %s)", res.FinalStep)
	}
	if lag := followed.At.Sub(res.ChangedAt); lag > bound {
		t.Fatalf("followed the change after %s, want within %v", lag, bound)
	}
	t.Logf("followed the rate change after %s: %s -> %s (%s); first batch at the new step chosen after %s",
		followed.At.Sub(res.ChangedAt), followed.From, followed.To, followed.Reason, res.LevelChosen.Sub(res.ChangedAt))
}
