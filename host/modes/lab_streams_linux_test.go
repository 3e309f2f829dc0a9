package modes_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// TestWANLabStreamsChangeMidTransfer changes the number of data
// connections of a live session four times while the pipeline carries a
// stream over the lab's internet profile (60 ms, 100 Mbit/s): every byte
// arrives, in order, no change costs a resume, and the delivery never
// stops for long. The longest gap in delivery around the changes is
// logged next to the gaps of the same transfer before them: a new
// connection starts in TCP's slow start, and the frames it takes arrive
// later than the others' (the receiver holds what overtook them).
func TestWANLabStreamsChangeMidTransfer(t *testing.T) {
	prof, err := wanlab.LookupProfile("internet")
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
	data := p.Bytes(16<<20, 5)

	// Delivery, sampled: the longest time the destination received nothing.
	type gap struct {
		at  time.Duration
		len time.Duration
	}
	var mu sync.Mutex
	var gaps []gap
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		last, lastAt := pair.Dst.Stats().BytesReceived, time.Now()
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tk.C:
				if v := pair.Dst.Stats().BytesReceived; v != last {
					mu.Lock()
					gaps = append(gaps, gap{lastAt.Sub(start), now.Sub(lastAt)})
					mu.Unlock()
					last, lastAt = v, now
				}
			}
		}
	}()
	changes := []int{8, 2, 6, 3}
	var changedAt []time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(1500 * time.Millisecond) // a steady transfer first
		for _, n := range changes {
			changedAt = append(changedAt, time.Since(start))
			got, err := pair.Src.Resize(ctx, n)
			if err != nil || got != n {
				t.Errorf("Resize(%d) = %d, %v", n, got, err)
				return
			}
			time.Sleep(time.Second)
		}
	}()
	res, err := modeslab.TransferFor(ctx, pair, data, 6500*time.Millisecond, modeslab.TransferConfig{Codecs: labCodecs(),
		Policy: pipeline.FixedPolicy{Codec: 1, Level: 1}, BatchBytes: 256 << 10})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	st := pair.Src.Stats()
	if st.Reconnects != 0 || st.RetransmittedMessages != 0 {
		t.Errorf("a change cost a resume: %+v", st)
	}
	if st.Streams != changes[len(changes)-1] || st.StreamsAdded != 4+4 || st.StreamsRetired != 6+3 {
		t.Errorf("streams %d, added %d, retired %d; want %d, 8, 9", st.Streams, st.StreamsAdded, st.StreamsRetired, changes[len(changes)-1])
	}
	var before, around time.Duration
	for _, g := range gaps {
		if g.at < changedAt[0]-100*time.Millisecond {
			before = max(before, g.len)
		} else {
			around = max(around, g.len)
		}
	}
	t.Logf("%d MiB at %.1f MB/s of stream; longest gap in delivery: %v before the changes, %v around them (RTT %v)",
		res.Source.BytesIn>>20, float64(res.Source.BytesIn)/res.Elapsed.Seconds()/1e6, before, around, prof.RTT)
	// Not a timing bound: a stall of this order would be a resume or a
	// retirement waiting for an idle timeout, not scheduling noise.
	if around > 3*time.Second {
		t.Errorf("delivery stopped for %v around the changes", around)
	}
}
