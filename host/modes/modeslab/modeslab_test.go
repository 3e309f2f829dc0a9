//go:build linux

package modeslab

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/wanlab"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSettingsPathFollowsTheLinkSettings(t *testing.T) {
	lp := wanlab.LinkParams{Delay: 30 * time.Millisecond, Rate: 100 * wanlab.Mbps, Loss: 0.01}
	p := SettingsPath(lp, 1500)
	if p.RTT != 60*time.Millisecond || p.Loss != 0.01 || p.Source != "config" {
		t.Fatalf("path %+v", p)
	}
	// 100 Mbit/s of 1500-byte IP packets carry 1448 bytes of payload each.
	if want := 100e6 / 8 * 1448 / 1500; math.Abs(p.Bandwidth-want) > 1 {
		t.Fatalf("bandwidth %v, want %v", p.Bandwidth, want)
	}
	if SettingsPath(wanlab.LinkParams{}, 1500).Bandwidth != 0 {
		t.Fatal("an unlimited rate must read as unknown bandwidth")
	}
}

func TestExpectedModesOfTheBuiltInProfiles(t *testing.T) {
	want := map[string][]modes.Mode{
		"dc":             {modes.Datacenter},
		"wan-100ms-1g":   {modes.Internet},
		"wan-50ms-5g":    {modes.Internet},
		"internet-lossy": {modes.Internet},
		"variable":       {modes.Hybrid, modes.Internet},
		"internet":       {modes.Internet},
	}
	for _, p := range wanlab.Profiles() {
		got := ExpectedModes(p, modes.DefaultThresholds())
		w, ok := want[p.Name]
		if !ok {
			t.Errorf("profile %q has no expectation here: add it", p.Name)
			continue
		}
		if len(got) != len(w) {
			t.Errorf("%s: %v, want %v", p.Name, got, w)
			continue
		}
		for i := range got {
			if got[i] != w[i] {
				t.Errorf("%s step %d: %v, want %v", p.Name, i, got[i], w[i])
			}
		}
	}
	// A custom metro link is between the thresholds.
	metro := wanlab.Profile{Name: "metro", RTT: 10 * time.Millisecond, Rate: wanlab.Gbps, MTU: 9000}
	if got := ExpectedModes(metro, modes.Thresholds{}); len(got) != 1 || got[0] != modes.Hybrid {
		t.Errorf("metro: %v, want hybrid", got)
	}
}

func TestProfileStepsFollowTheSchedule(t *testing.T) {
	v, err := wanlab.LookupProfile("variable")
	if err != nil {
		t.Fatal(err)
	}
	steps := ProfileSteps(v)
	if len(steps) != len(v.Steps) {
		t.Fatalf("%d steps for %d", len(steps), len(v.Steps))
	}
	for i, s := range v.Steps {
		if steps[i].Delay != s.RTT/2 || steps[i].Rate != s.Rate || steps[i].QueueDelay != v.QueueDelay {
			t.Errorf("step %d: %+v from %+v", i, steps[i], s)
		}
	}
}

func TestWritersCatchWrongBytes(t *testing.T) {
	data := []byte("0123456789abcdef")
	c := &compareWriter{want: data}
	if _, err := c.Write(data[:5]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("X")); err == nil || !strings.Contains(err.Error(), "[5, 6)") {
		t.Fatalf("a wrong byte at 5: %v", err)
	}
	c = &compareWriter{want: data}
	if _, err := c.Write(append(bytes.Clone(data), 'x')); err == nil {
		t.Fatal("more bytes than sent must fail")
	}

	l := &loopCompareWriter{want: data}
	twice := append(bytes.Clone(data), data...)
	if _, err := l.Write(twice[3:]); err == nil {
		t.Fatal("a stream that does not start at the beginning must fail")
	}
	l = &loopCompareWriter{want: data}
	for _, chunk := range [][]byte{twice[:7], twice[7:23], twice[23:]} {
		if _, err := l.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.check(int64(len(twice))); err != nil {
		t.Fatal(err)
	}
	if err := l.check(int64(len(twice) + 1)); err == nil {
		t.Fatal("a short delivery must fail")
	}
	bad := bytes.Clone(twice)
	bad[20] ^= 1
	l = &loopCompareWriter{want: data}
	if _, err := l.Write(bad); err == nil {
		t.Fatal("a flipped bit in the second copy must fail")
	}
}

func TestLoopReaderRepeatsUntilStopped(t *testing.T) {
	r := &loopReader{data: []byte("abc")}
	buf := make([]byte, 2)
	var got []byte
	for len(got) < 7 {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !strings.HasPrefix(string(got), "abcabca") {
		t.Fatalf("read %q", got)
	}
	r.stop.Store(true)
	if n, err := r.Read(buf); n != 0 || err == nil {
		t.Fatalf("after stop: %d, %v", n, err)
	}
}

func TestTowards(t *testing.T) {
	l := modes.Ladder{{Name: "store"}, {Name: "s2:1"}, {Name: "zstd:1"}}
	heavier := modes.Decision{Kind: modes.KindLevel, From: "s2:1", To: "zstd:1"}
	lighter := modes.Decision{Kind: modes.KindLevel, From: "s2:1", To: "store"}
	if !towards(l, heavier, +1) || towards(l, heavier, -1) || !towards(l, lighter, -1) || towards(l, lighter, +1) || !towards(l, lighter, 0) {
		t.Fatal("direction of level decisions misread")
	}
}
