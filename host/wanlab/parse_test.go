package wanlab

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rate
	}{
		{"100mbit", 100 * Mbps}, {"1.5Gbit/s", 1500 * Mbps}, {"800k", 800 * Kbps}, {"10g", 10 * Gbps},
		{"250000000", 250 * Mbps}, {"0", 0}, {"unlimited", 0}, {" 2 Mbps ", 2 * Mbps}, {"1T", 1000 * Gbps},
	} {
		got, err := ParseRate(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "fast", "-1m", "2t", "NaN", "1e400", "mbit"} {
		if _, err := ParseRate(in); !errors.Is(err, ErrBadValue) {
			t.Errorf("ParseRate(%q): err %v, want ErrBadValue", in, err)
		}
	}
}

func TestRateString(t *testing.T) {
	for _, tc := range []struct {
		r    Rate
		want string
	}{{0, "unlimited"}, {1500 * Mbps, "1.5 Gbit/s"}, {100 * Mbps, "100 Mbit/s"}, {64 * Kbps, "64 kbit/s"}, {10, "10 bit/s"}} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%d.String() = %q, want %q", int64(tc.r), got, tc.want)
		}
	}
}

func TestParseLoss(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
	}{{"1%", 0.01}, {"0.5 %", 0.005}, {"0.02", 0.02}, {"0", 0}, {"100%", 1}} {
		got, err := ParseLoss(tc.in)
		if err != nil || math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("ParseLoss(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "%", "2", "101%", "-1%", "NaN", "lots"} {
		if _, err := ParseLoss(in); !errors.Is(err, ErrBadValue) {
			t.Errorf("ParseLoss(%q): err %v, want ErrBadValue", in, err)
		}
	}
}

func TestParseQueue(t *testing.T) {
	for _, tc := range []struct {
		in    string
		bytes int64
		delay time.Duration
	}{{"50ms", 0, 50 * time.Millisecond}, {"256KiB", 256 << 10, 0}, {"1MB", 1_000_000, 0}, {"1500", 1500, 0}, {"64k", 64 << 10, 0}, {"0", 0, 0}} {
		b, d, err := ParseQueue(tc.in)
		if err != nil || b != tc.bytes || d != tc.delay {
			t.Errorf("ParseQueue(%q) = %d, %v, %v; want %d, %v", tc.in, b, d, err, tc.bytes, tc.delay)
		}
	}
	for _, in := range []string{"", "-5ms", "11s", "2GiB", "0.1", "big", "-3"} {
		if _, _, err := ParseQueue(in); !errors.Is(err, ErrBadValue) {
			t.Errorf("ParseQueue(%q): err %v, want ErrBadValue", in, err)
		}
	}
}

func TestProfilesValid(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range Profiles() {
		if err := p.Validate(); err != nil {
			t.Errorf("profile %s: %v", p.Name, err)
		}
		if seen[p.Name] || p.Description == "" {
			t.Errorf("profile %s: duplicate or undescribed", p.Name)
		}
		seen[p.Name] = true
	}
	for _, name := range []string{"dc", "wan-100ms-1g", "wan-50ms-5g", "internet-lossy", "variable", "internet"} {
		if _, err := LookupProfile(name); err != nil {
			t.Errorf("profile %s: %v", name, err)
		}
	}
	if _, err := LookupProfile("moon"); !errors.Is(err, ErrBadValue) {
		t.Errorf("unknown profile: err %v", err)
	}
	v, _ := LookupProfile("variable")
	if l := v.Link(); l.Delay != v.Steps[0].RTT/2 || l.Rate != v.Steps[0].Rate {
		t.Errorf("variable starts at %v, want its first step", l)
	}
	if !strings.Contains(v.Summary(), "cycling") {
		t.Errorf("summary %q does not show the schedule", v.Summary())
	}
}

func TestValidateRejects(t *testing.T) {
	good, _ := LookupProfile("internet")
	for name, mut := range map[string]func(*Profile){
		"mtu":       func(p *Profile) { p.MTU = 100 },
		"loss":      func(p *Profile) { p.Loss = 1.5 },
		"loss nan":  func(p *Profile) { p.Loss = math.NaN() },
		"rate":      func(p *Profile) { p.Rate = -1 },
		"jitter":    func(p *Profile) { p.Jitter = -time.Millisecond },
		"rtt":       func(p *Profile) { p.RTT = time.Hour },
		"queue":     func(p *Profile) { p.QueueBytes = 1 << 40 },
		"step":      func(p *Profile) { p.Steps = []Step{{For: time.Millisecond}} },
		"cut":       func(p *Profile) { p.Cuts = []ScheduledCut{{After: 0, For: 0}} },
		"queue neg": func(p *Profile) { p.QueueDelay = -1 },
	} {
		p := good
		mut(&p)
		if err := p.Validate(); !errors.Is(err, ErrBadValue) {
			t.Errorf("%s: err %v, want ErrBadValue", name, err)
		}
	}
}

func TestRoute(t *testing.T) {
	plan := addrPlan{base: 10<<24 | 77<<16, mask: 0xffffff00, hosts: 3}
	pkt := func(d0, d1, d2, d3 byte) []byte {
		b := make([]byte, 40)
		b[0] = 0x45
		b[16], b[17], b[18], b[19] = d0, d1, d2, d3
		return b
	}
	for _, tc := range []struct {
		pkt  []byte
		want int
	}{
		{pkt(10, 77, 0, 1), 0}, {pkt(10, 77, 0, 3), 2}, {pkt(10, 77, 0, 4), -1}, {pkt(10, 77, 0, 0), -1},
		{pkt(10, 77, 0, 255), -1}, {pkt(10, 78, 0, 1), -1}, {pkt(10, 77, 0, 1)[:19], -1},
		{append([]byte{0x60}, pkt(10, 77, 0, 1)[1:]...), -1}, {append([]byte{0x44}, pkt(10, 77, 0, 1)[1:]...), -1},
	} {
		if got := plan.route(tc.pkt); got != tc.want {
			t.Errorf("route(% x) = %d, want %d", tc.pkt[:min(len(tc.pkt), 20)], got, tc.want)
		}
	}
}

func FuzzRoute(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2})
	f.Add([]byte{0x60, 0, 0, 0})
	f.Add([]byte{})
	plan := addrPlan{base: 10<<24 | 77<<16, mask: 0xffffff00, hosts: 2}
	f.Fuzz(func(t *testing.T, b []byte) {
		i := plan.route(b)
		if i < -1 || i >= plan.hosts {
			t.Fatalf("route gave host %d of %d", i, plan.hosts)
		}
		if i >= 0 && (len(b) < 20 || b[0]>>4 != 4 || int(b[19]) != i+1) {
			t.Fatalf("route accepted % x as host %d", b, i)
		}
	})
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"100mbit", "1.5Gbit/s", "0", "unlimited", "1e3k", "-1", "9999999T"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			if !errors.Is(err, ErrBadValue) {
				t.Fatalf("ParseRate(%q): error %v does not wrap ErrBadValue", s, err)
			}
			return
		}
		if r < 0 || r > maxRate {
			t.Fatalf("ParseRate(%q) = %d out of range", s, int64(r))
		}
	})
}

func FuzzParseLossQueue(f *testing.F) {
	for _, s := range []string{"1%", "0.01", "50ms", "256KiB", "1MB", "0", "%", "1e309"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v, err := ParseLoss(s); err == nil && !(v >= 0 && v <= 1) {
			t.Fatalf("ParseLoss(%q) = %v", s, v)
		} else if err != nil && !errors.Is(err, ErrBadValue) {
			t.Fatalf("ParseLoss(%q): %v", s, err)
		}
		b, d, err := ParseQueue(s)
		if err != nil {
			if !errors.Is(err, ErrBadValue) {
				t.Fatalf("ParseQueue(%q): %v", s, err)
			}
			return
		}
		if b < 0 || b > maxQueueBytes || d < 0 || d > maxDelay || (b > 0 && d > 0) {
			t.Fatalf("ParseQueue(%q) = %d, %v", s, b, d)
		}
	})
}

func TestParseDevStats(t *testing.T) {
	data := []byte(`Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  wan0: 1234567     890    0    3    0     0          0         0   765432     654    0    7    0     0       0          0
`)
	st, err := parseDevStats(data, "wan0")
	if err != nil {
		t.Fatal(err)
	}
	if st != (devStats{RxPackets: 890, RxDropped: 3, TxPackets: 654, TxDropped: 7}) {
		t.Fatalf("stats %+v", st)
	}
	if _, err := parseDevStats(data, "eth9"); !errors.Is(err, ErrBadValue) {
		t.Fatalf("missing interface: %v", err)
	}
	if _, err := parseDevStats([]byte("wan0: 1 2 3\n"), "wan0"); !errors.Is(err, ErrBadValue) {
		t.Fatalf("short line: %v", err)
	}
}

func FuzzParseDevStats(f *testing.F) {
	f.Add([]byte("  wan0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"))
	f.Add([]byte("wan0:\n"))
	f.Add([]byte("wan0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 -16\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parseDevStats(b, "wan0"); err != nil && !errors.Is(err, ErrBadValue) {
			t.Fatalf("error %v does not wrap ErrBadValue", err)
		}
	})
}

func TestProbeRoundTrip(t *testing.T) {
	b := make([]byte, probeSize)
	encodeProbe(b, 77, 123456789)
	seq, sent, ok := decodeProbe(b)
	if !ok || seq != 77 || sent != 123456789 {
		t.Fatalf("decode = %d, %d, %v", seq, sent, ok)
	}
	if _, _, ok := decodeProbe(b[:probeSize-1]); ok {
		t.Fatal("short probe accepted")
	}
	b[0] ^= 1
	if _, _, ok := decodeProbe(b); ok {
		t.Fatal("bad magic accepted")
	}
}

func FuzzDecodeProbe(f *testing.F) {
	b := make([]byte, probeSize)
	encodeProbe(b, 1, 2)
	f.Add(b)
	f.Add([]byte("DWLP"))
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, sent, ok := decodeProbe(b)
		if !ok {
			return
		}
		if sent < 0 || len(b) != probeSize {
			t.Fatalf("accepted %d-byte probe sent at %d", len(b), sent)
		}
		re := make([]byte, probeSize)
		encodeProbe(re, seq, sent)
		if string(re[:16]) != string(b[:16]) {
			t.Fatalf("re-encoding differs: % x vs % x", re[:16], b[:16])
		}
	})
}

func TestParseTCPMem(t *testing.T) {
	used, err := parseSockstatTCPMem([]byte("sockets: used 39\nTCP: inuse 23 orphan 64 tw 141 alloc 87 mem 289164\nUDP: inuse 0 mem 0\n"))
	if err != nil || used != 289164 {
		t.Fatalf("sockstat: %d, %v", used, err)
	}
	marks, err := parseTCPMem([]byte("287898\t383867\t575796\n"))
	if err != nil || marks != [3]int64{287898, 383867, 575796} {
		t.Fatalf("tcp_mem: %v, %v", marks, err)
	}
	for _, bad := range []string{"", "TCP: inuse 1\n", "TCP: mem x\n", "TCP: mem -1\n"} {
		if _, err := parseSockstatTCPMem([]byte(bad)); !errors.Is(err, ErrBadValue) {
			t.Errorf("sockstat %q: %v", bad, err)
		}
	}
	for _, bad := range []string{"", "1 2", "1 2 x", "1 2 3 4"} {
		if _, err := parseTCPMem([]byte(bad)); !errors.Is(err, ErrBadValue) {
			t.Errorf("tcp_mem %q: %v", bad, err)
		}
	}
}

func FuzzParseTCPMem(f *testing.F) {
	f.Add([]byte("TCP: inuse 23 orphan 64 tw 141 alloc 87 mem 289164\n"))
	f.Add([]byte("287898\t383867\t575796\n"))
	f.Add([]byte("TCP: mem"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if v, err := parseSockstatTCPMem(b); err != nil && !errors.Is(err, ErrBadValue) || err == nil && v < 0 {
			t.Fatalf("sockstat: %d, %v", v, err)
		}
		if m, err := parseTCPMem(b); err != nil && !errors.Is(err, ErrBadValue) || err == nil && (m[0] < 0 || m[1] < 0 || m[2] < 0) {
			t.Fatalf("tcp_mem: %v, %v", m, err)
		}
	})
}
