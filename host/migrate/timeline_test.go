package migrate

import (
	"testing"
	"time"
)

func TestTimelineTrustsOnlyAConsistentDestinationClock(t *testing.T) {
	stop := time.Unix(1000, 0)
	at := func(ms int) time.Time { return stop.Add(time.Duration(ms) * time.Millisecond) }
	cases := []struct {
		name     string
		destNano int64
		wantDest time.Duration
	}{
		{"consistent", at(700).UnixNano(), 700 * time.Millisecond},
		{"ahead of the result (skew)", at(1500).UnixNano(), 0},
		{"before the stop (skew)", at(-5).UnixNano(), 0},
		{"not sent", 0, 0},
	}
	for _, c := range cases {
		sw := timeline(stop, at(400), at(300), at(900), c.destNano)
		if sw.DestinationRunning != c.wantDest {
			t.Errorf("%s: destination running %v, want %v", c.name, sw.DestinationRunning, c.wantDest)
		}
		if sw.SourceCompleted != 400*time.Millisecond || sw.StreamDone != 300*time.Millisecond || sw.ResultReceived != 900*time.Millisecond {
			t.Errorf("%s: %+v", c.name, sw)
		}
	}
	if sw := timeline(stop, at(-10), at(-20), at(50), 0); sw.SourceCompleted != 0 || sw.StreamDone != 0 {
		t.Errorf("steps before the stop must clamp to zero: %+v", sw)
	}
}
