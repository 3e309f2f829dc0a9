package modes

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestClassifyAtTheBoundaries(t *testing.T) {
	d := DefaultThresholds()
	const ms = time.Millisecond
	dcBW := d.DatacenterMinBandwidth // 1 Gbit/s
	inBW := d.InternetMaxBandwidth   // 300 Mbit/s
	for _, c := range []struct {
		name string
		p    Path
		want Mode
	}{
		{"fabric", Path{RTT: 200 * time.Microsecond, Bandwidth: 10 * Gbit}, Datacenter},
		{"rtt just under 2ms", Path{RTT: 2*ms - 1, Bandwidth: dcBW}, Datacenter},
		{"rtt exactly 2ms", Path{RTT: 2 * ms, Bandwidth: dcBW}, Hybrid},
		{"bandwidth exactly at the datacenter bar", Path{RTT: ms, Bandwidth: dcBW}, Datacenter},
		{"bandwidth just under the datacenter bar", Path{RTT: ms, Bandwidth: math.Nextafter(dcBW, 0)}, Hybrid},
		{"rtt exactly 30ms", Path{RTT: 30 * ms, Bandwidth: Gbit}, Hybrid},
		{"rtt just over 30ms", Path{RTT: 30*ms + 1, Bandwidth: 10 * Gbit}, Internet},
		{"bandwidth exactly 300 Mbit/s", Path{RTT: 10 * ms, Bandwidth: inBW}, Hybrid},
		{"bandwidth just under 300 Mbit/s", Path{RTT: 10 * ms, Bandwidth: math.Nextafter(inBW, 0)}, Internet},
		{"loss exactly 0.5%", Path{RTT: ms, Bandwidth: 10 * Gbit, Loss: 0.005}, Datacenter},
		{"loss just over 0.5% on a fabric", Path{RTT: ms, Bandwidth: 10 * Gbit, Loss: math.Nextafter(0.005, 1)}, Internet},
		{"unknown bandwidth counts as thin", Path{RTT: ms}, Internet},
		{"unknown rtt counts as short", Path{Bandwidth: 10 * Gbit}, Datacenter},
		{"wan-100ms-1g", Path{RTT: 100 * ms, Bandwidth: Gbit}, Internet},
		{"metro 10ms 1G", Path{RTT: 10 * ms, Bandwidth: Gbit}, Hybrid},
		// A host-bound reading is a lower bound: a short path the hosts
		// cannot fill is a datacenter path, unless even the bound is thin.
		{"host-bound short path", Path{RTT: ms, Bandwidth: 500 * Mbit, HostBound: true}, Datacenter},
		{"host-bound under the internet bar", Path{RTT: ms, Bandwidth: math.Nextafter(inBW, 0), HostBound: true}, Internet},
		{"host-bound metro", Path{RTT: 10 * ms, Bandwidth: 500 * Mbit, HostBound: true}, Hybrid},
		{"host-bound long path", Path{RTT: 60 * ms, Bandwidth: 5 * Gbit, HostBound: true}, Internet},
		{"host-bound lossy fabric", Path{RTT: ms, Bandwidth: 500 * Mbit, Loss: 0.01, HostBound: true}, Internet},
	} {
		if got := Classify(c.p, d); got != c.want {
			t.Errorf("%s: Classify(%v) = %v, want %v", c.name, c.p, got, c.want)
		}
	}
	// Zero thresholds mean the defaults.
	if got := Classify(Path{RTT: time.Millisecond, Bandwidth: 5 * Gbit}, Thresholds{}); got != Datacenter {
		t.Errorf("zero thresholds: %v", got)
	}
	// Overridden thresholds move the boundary.
	o := d
	o.DatacenterMinBandwidth = 20 * Gbit
	if got := Classify(Path{RTT: time.Millisecond, Bandwidth: 10 * Gbit}, o); got != Hybrid {
		t.Errorf("raised datacenter bandwidth: %v, want hybrid", got)
	}
}

func TestThresholdsValidate(t *testing.T) {
	if err := DefaultThresholds().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Thresholds){
		func(t *Thresholds) { t.DatacenterMaxRTT = 50 * time.Millisecond },
		func(t *Thresholds) { t.InternetMaxBandwidth = 3 * Gbit },
		func(t *Thresholds) { t.InternetMinLoss = 1 },
		func(t *Thresholds) { t.Margin = 1.5 },
		func(t *Thresholds) { t.DatacenterMinBandwidth = math.NaN() },
		func(t *Thresholds) { t.Hold = -time.Second },
	}
	for i, f := range bad {
		th := DefaultThresholds()
		f(&th)
		if err := th.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("case %d: Validate = %v", i, err)
		}
	}
}

func TestClassifierHysteresis(t *testing.T) {
	th := DefaultThresholds() // margin 25 %, hold 2 s
	t0 := time.Unix(1000, 0)
	c := NewClassifier(th, Path{RTT: time.Millisecond, Bandwidth: 4 * Gbit})
	if c.Mode() != Datacenter {
		t.Fatalf("start %v", c.Mode())
	}
	// Just below the datacenter bandwidth but within the margin: stays,
	// however long it lasts.
	for i := range 100 {
		if m, ch := c.Update(Path{RTT: time.Millisecond, Bandwidth: 0.85 * Gbit}, t0.Add(time.Duration(i)*100*time.Millisecond)); m != Datacenter || ch {
			t.Fatalf("inside the margin at %d: %v changed=%v", i, m, ch)
		}
	}
	// Clearly hybrid (0.75 Gbit/s < 1/1.25 = 0.8), but only for 1.9 s: stays.
	at := t0.Add(time.Minute)
	for i := range 20 {
		if m, _ := c.Update(Path{RTT: time.Millisecond, Bandwidth: 0.75 * Gbit}, at.Add(time.Duration(i)*100*time.Millisecond)); m != Datacenter {
			t.Fatalf("switched before the hold at %d", i)
		}
	}
	// One good sample resets the candidate.
	c.Update(Path{RTT: time.Millisecond, Bandwidth: 1.5 * Gbit}, at.Add(2*time.Second))
	if m, _ := c.Update(Path{RTT: time.Millisecond, Bandwidth: 0.75 * Gbit}, at.Add(3*time.Second)); m != Datacenter {
		t.Fatal("hold not restarted")
	}
	m, ch := c.Update(Path{RTT: time.Millisecond, Bandwidth: 0.75 * Gbit}, at.Add(5*time.Second))
	if m != Hybrid || !ch {
		t.Fatalf("after a 2 s hold: %v changed=%v, want hybrid", m, ch)
	}
	// Back towards datacenter: 1.1 Gbit/s is above the threshold but
	// within the margin (1*1.25 = 1.25): stays hybrid.
	for i := range 50 {
		if m, _ := c.Update(Path{RTT: time.Millisecond, Bandwidth: 1.1 * Gbit}, at.Add(10*time.Second+time.Duration(i)*100*time.Millisecond)); m != Hybrid {
			t.Fatalf("left hybrid inside the margin")
		}
	}
	// An oscillating path around the boundary never flaps.
	changes := 0
	for i := range 1000 {
		bw := 1 * Gbit * (1 + 0.2*math.Sin(float64(i)/3))
		if _, ch := c.Update(Path{RTT: time.Millisecond, Bandwidth: bw}, at.Add(time.Minute+time.Duration(i)*50*time.Millisecond)); ch {
			changes++
		}
	}
	if changes != 0 {
		t.Errorf("noise around the boundary changed the mode %d times", changes)
	}
	// A real move to internet is followed after the hold.
	var got Mode
	for i := range 30 {
		got, _ = c.Update(Path{RTT: 80 * time.Millisecond, Bandwidth: 100 * Mbit}, at.Add(5*time.Minute+time.Duration(i)*100*time.Millisecond))
	}
	if got != Internet {
		t.Errorf("after 3 s of an internet path: %v", got)
	}
}

func TestModeText(t *testing.T) {
	for _, m := range Modes {
		b, err := m.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var back Mode
		if err := back.UnmarshalText(b); err != nil || back != m {
			t.Errorf("%v: round trip %v %v", m, back, err)
		}
	}
	if _, err := Mode(0).MarshalText(); err == nil {
		t.Error("invalid mode marshalled")
	}
	if _, err := ParseMode("lan"); !errors.Is(err, ErrBadConfig) {
		t.Errorf("ParseMode(lan) = %v", err)
	}
	if m, _ := ParseMode("dc"); m != Datacenter {
		t.Error("dc")
	}
}

func TestPathValidate(t *testing.T) {
	good := Path{RTT: time.Millisecond, Bandwidth: Gbit, Loss: 0.01, Source: "probe"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []Path{
		{RTT: -1}, {RTT: 2 * time.Minute}, {Bandwidth: math.NaN()}, {Bandwidth: math.Inf(1)}, {Bandwidth: -1},
		{Loss: 1.5}, {Loss: math.NaN()}, {Source: string(make([]byte, 65))},
	} {
		if err := p.Validate(); !errors.Is(err, ErrBadConfig) {
			t.Errorf("Validate(%+v) = %v", p, err)
		}
	}
}
