package modes_test

import (
	"context"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/modes/modeslab"
	"github.com/dwcp/dwcp/host/wanlab"
	"github.com/dwcp/dwcp/sdk/conformance"
)

// TestWANLabModeFollowsLinkChange runs the validation report's two switch
// scenarios once each in one lab of the dc profile (its MTU, 64000, for
// both: a lab's MTU is fixed): a transfer starts on one profile's link
// settings, with the mode the probe finds (not manual), and the link
// changes to the other's 2 s in. The controller's mode must follow within
// the bound docs/modes.md states for the lab (8 s: the traces' 3-4 s plus
// the lab's slower windows on a loaded 2-core machine). A run that misses it
// while the lab's shaper ran later than the new link's one-way delay is run
// once more: the lab was not emulating the profile then.
func TestWANLabModeFollowsLinkChange(t *testing.T) {
	if modes.RaceEnabled {
		t.Skip("the controller reacts to CPU speed, which -race distorts; make test runs this without -race")
	}
	dc, err := wanlab.LookupProfile("dc")
	if err != nil {
		t.Fatal(err)
	}
	inet, err := wanlab.LookupProfile("internet")
	if err != nil {
		t.Fatal(err)
	}
	lab := wanlab.NewTest(t, wanlab.Config{Profile: dc})
	certs, err := modeslab.NewCerts(lab)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := conformance.PatternByName(conformance.PatternRealMemory)
	data := p.Bytes(32<<20, 3)
	const bound = 8 * time.Second
	for _, c := range []struct {
		name          string
		before, after wanlab.Profile
		want          modes.Mode
		toward        int
	}{
		{"internet to datacenter", inet, dc, modes.Datacenter, -1},
		{"datacenter to internet", dc, inet, modes.Internet, +1},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			a, b := lab.Host(0), lab.Host(1)
			for attempt := 1; ; attempt++ {
				st0 := lab.Stats()
				res, err := modeslab.LinkChange(ctx, lab, modeslab.LinkChangeConfig{
					Before: c.before.Link(), After: c.after.Link(), ChangeAfter: 2 * time.Second, Watch: bound + 2*time.Second,
					Toward: c.toward, WantMode: c.want, Data: data, Codecs: labCodecs(), Sessions: modeslab.SessionOptions{Certs: certs},
				})
				if err != nil {
					t.Fatal(err)
				}
				late := lab.Stats().MeanLateSince(st0, a.Name, b.Name)
				t.Logf("attempt %d: started %v at %s (probe %v), the lab's packets %v late on average; decisions:\n%s", attempt, res.StartMode, res.StartStep, res.Path, late, res.Summary)
				for _, d := range res.Decisions {
					t.Logf("batch %d: window %+v", d.Batch, d.Window)
				}
				if res.StartMode == c.want {
					t.Fatalf("the probe of %s's settings already classified %v", c.before.Name, c.want)
				}
				d := res.ModeChange
				followed := d != nil && d.To == c.want.String() && d.At.Sub(res.ChangedAt) <= bound
				// The lab's shaper is user-space code on the two cores
				// the sessions' TLS and codecs use. When it hands packets
				// over later, on average, than the new link's one-way
				// delay, the link the controller saw was not the
				// profile's (windows read network-limited at 80-120 MB/s
				// on the 4 Gbit/s link at load 6-9). Run again, once.
				if !followed && attempt < 2 && late > c.after.RTT/2 {
					t.Logf("attempt %d: not followed within %v while the lab ran %v late (one-way delay %v): the lab was overloaded; running again", attempt, bound, late, c.after.RTT/2)
					continue
				}
				if d == nil || d.To != c.want.String() {
					t.Fatalf("no mode decision to %v within %v of the change (first: %v; final mode %v)", c.want, bound+2*time.Second, d, res.FinalMode)
				}
				lag := d.At.Sub(res.ChangedAt)
				t.Logf("mode %s -> %s after %v: %s", d.From, d.To, lag, d.Reason)
				if lag > bound {
					t.Errorf("mode followed after %v, want within %v", lag, bound)
				}
				if l := res.LevelChange; l != nil {
					t.Logf("level %s -> %s after %v", l.From, l.To, l.At.Sub(res.ChangedAt))
				}
				return
			}
		})
	}
}
