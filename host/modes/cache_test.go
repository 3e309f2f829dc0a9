package modes

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCacheRoundTripAndAge(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	c, err := OpenCache(dir, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 20, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return now }
	if _, ok, err := c.Get("dst"); ok || err != nil {
		t.Fatalf("empty cache: %v %v", ok, err)
	}
	p := Path{RTT: 12 * time.Millisecond, Bandwidth: 80e6, Loss: 0.002, When: now.Add(-time.Minute), Source: "probe"}
	if err := c.Put("dst", p); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("other", Path{RTT: time.Millisecond, Bandwidth: Gbit}); err != nil {
		t.Fatal(err)
	}
	got, ok, err := c.Get("dst")
	if err != nil || !ok || got.RTT != p.RTT || got.Bandwidth != p.Bandwidth || got.Loss != p.Loss || !got.When.Equal(p.When) || got.Source != "probe" {
		t.Fatalf("Get = %+v %v %v", got, ok, err)
	}
	// A second Cache on the same directory (the next session) sees it.
	c2, _ := OpenCache(dir, time.Hour)
	c2.now = c.now
	if _, ok, _ := c2.Get("other"); !ok {
		t.Error("second cache does not see the entry")
	}
	// Past the age limit the entry is ignored.
	now = now.Add(2 * time.Hour)
	if _, ok, err := c.Get("dst"); ok || err != nil {
		t.Errorf("stale entry: %v %v", ok, err)
	}
	fi, err := os.Stat(filepath.Join(dir, CacheFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cache file %v %v", fi, err)
	}
	// Bad names and paths are refused.
	if err := c.Put("", p); !errors.Is(err, ErrBadConfig) {
		t.Errorf("empty peer: %v", err)
	}
	if err := c.Put("x\n", p); !errors.Is(err, ErrBadConfig) {
		t.Errorf("control character: %v", err)
	}
	if err := c.Put("dst", Path{Loss: 3}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("bad path: %v", err)
	}
}

func TestCacheSurvivesADamagedFile(t *testing.T) {
	dir := t.TempDir()
	c, err := OpenCache(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"{", `{"version":7,"peers":{}}`, `{"version":1,"peers":{"a":{"bandwidth":"x"}}}`,
		`{"version":1,"peers":{"a":{"loss":2}}}`, strings.Repeat(" ", maxCacheFile+1)} {
		if err := os.WriteFile(filepath.Join(dir, CacheFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, ok, err := c.Get("a"); ok || !errors.Is(err, ErrBadConfig) {
			t.Errorf("damaged %.20q: %v %v", bad, ok, err)
		}
	}
	// Put replaces the damaged file.
	if err := c.Put("a", Path{RTT: time.Millisecond, Bandwidth: Gbit}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := c.Get("a"); !ok || err != nil {
		t.Errorf("after Put: %v %v", ok, err)
	}
}

func TestCacheEvictsTheOldest(t *testing.T) {
	dir := t.TempDir()
	c, _ := OpenCache(dir, 24*time.Hour)
	base := time.Now().Add(-time.Hour)
	peers := map[string]Path{}
	for i := range maxCachePeers {
		peers["p"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+itoa(i)] = Path{RTT: time.Millisecond, Bandwidth: Gbit, When: base.Add(time.Duration(i) * time.Second)}
	}
	data := []byte(`{"version":1,"peers":{`)
	first := true
	for n, p := range peers {
		if !first {
			data = append(data, ',')
		}
		first = false
		data = append(data, `"`+n+`":{"rtt":1000000,"bandwidth":1.25e8,"when":"`+p.When.Format(time.RFC3339Nano)+`"}`...)
	}
	data = append(data, "}}"...)
	if err := os.WriteFile(filepath.Join(dir, CacheFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Put("newcomer", Path{RTT: time.Millisecond, Bandwidth: Gbit}); err != nil {
		t.Fatal(err)
	}
	all, err := c.load()
	if err != nil || len(all) != maxCachePeers {
		t.Fatalf("%d peers, %v", len(all), err)
	}
	if _, ok := all["newcomer"]; !ok {
		t.Error("newcomer missing")
	}
	for n, p := range peers {
		if p.When.Equal(base) {
			if _, ok := all[n]; ok {
				t.Error("oldest entry kept")
			}
		}
	}
}

func itoa(i int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
		if i == 0 {
			return string(b)
		}
	}
}

func TestOverrides(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "modes.json")
	if o, err := LoadOverrides(file); err != nil || o.Mode != 0 || len(o.Peers) != 0 {
		t.Fatalf("missing file: %+v %v", o, err)
	}
	doc := `{"version":1,"peers":{"dst-a":"internet","dst-b":"dc"},
	  "thresholds":{"datacenter_max_rtt":"1ms","datacenter_min_bandwidth":"5gbit","internet_max_bandwidth":"500mbit/s","internet_min_loss":"1%","margin":0.1,"hold":"5s"}}`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := LoadOverrides(file)
	if err != nil {
		t.Fatal(err)
	}
	th := o.Thresholds
	if th.DatacenterMaxRTT != time.Millisecond || th.DatacenterMinBandwidth != 5*Gbit || th.InternetMaxBandwidth != 500*Mbit ||
		th.InternetMinLoss != 0.01 || th.Margin != 0.1 || th.Hold != 5*time.Second || th.InternetMinRTT != 0 {
		t.Errorf("thresholds %+v", th)
	}
	fabric := Path{RTT: 500 * time.Microsecond, Bandwidth: 4 * Gbit}
	// Per migration beats per peer beats the file's global mode beats the
	// classification.
	for _, c := range []struct {
		peer      string
		migration Mode
		global    Mode
		want      Mode
		manual    bool
	}{
		{"dst-a", Datacenter, 0, Datacenter, true},
		{"dst-a", 0, Hybrid, Internet, true},
		{"dst-c", 0, Hybrid, Hybrid, true},
		// 4 Gbit/s is below this file's 5 Gbit/s datacenter threshold.
		{"dst-c", 0, 0, Hybrid, false},
	} {
		oo := o
		oo.Mode = c.global
		m, manual, why := Resolve(c.peer, c.migration, oo, fabric)
		if m != c.want || manual != c.manual || why == "" {
			t.Errorf("Resolve(%s, %v, global %v) = %v %v %q", c.peer, c.migration, c.global, m, manual, why)
		}
	}
	for _, bad := range []string{
		`{"version":2}`,
		`{"version":1,"mode":"fast"}`,
		`{"version":1,"peers":{"a":"lan"}}`,
		`{"version":1,"unknown":1}`,
		`{"version":1,"thresholds":{"hold":"-1s"}}`,
		`{"version":1,"thresholds":{"internet_min_loss":"150%"}}`,
		`{"version":1,"thresholds":{"datacenter_min_bandwidth":"100mbit"}}`,
		`{"version":1,"thresholds":{"internet_max_bandwidth":"fast"}}`,
	} {
		if _, err := ParseOverrides([]byte(bad)); !errors.Is(err, ErrBadConfig) {
			t.Errorf("ParseOverrides(%s) = %v", bad, err)
		}
	}
	if v, err := ParseBitRate("2.5Gbit/s"); err != nil || v != 2.5*Gbit {
		t.Errorf("2.5Gbit/s = %v %v", v, err)
	}
}
