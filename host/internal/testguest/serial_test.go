package testguest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseHeartbeat(t *testing.T) {
	hb, ok := parseHeartbeat("DWCP hb=42 up=17.05 dirty_kb=1024 sparse=20")
	if !ok || hb.N != 42 || hb.Up != 17050*time.Millisecond {
		t.Errorf("parseHeartbeat = %+v, %v", hb, ok)
	}
	// A kernel message can precede the heartbeat on the same console line.
	if hb, ok := parseHeartbeat("[   12.5] random: crng init done DWCP hb=3 up=4.00"); !ok || hb.N != 3 {
		t.Errorf("heartbeat after other output = %+v, %v", hb, ok)
	}
	for _, bad := range []string{
		"DWCP hb= up=1.00", "DWCP hb=1 up=1", "DWCP hb=1 up=1.5", "DWCP hb=-1 up=1.00",
		"DWCP hb=1234567890 up=1.00", "hb=1 up=1.00", "DWCP hb=1 up=1.000",
	} {
		if hb, ok := parseHeartbeat(bad); ok {
			t.Errorf("parseHeartbeat(%q) = %+v, want no match", bad, hb)
		}
	}
}

func TestParseChecksum(t *testing.T) {
	c, ok := parseChecksum("DWCP sum=6b7a58f1ae784000835ee7fb5b1664c0 mb=4 n=12")
	if !ok || c.Sum != "6b7a58f1ae784000835ee7fb5b1664c0" || c.MiB != 4 || c.N != 12 {
		t.Errorf("parseChecksum = %+v, %v", c, ok)
	}
	for _, bad := range []string{
		"DWCP sum=6b7a58f1ae784000835ee7fb5b1664c mb=4 n=1",  // 31 digits
		"DWCP sum=6B7A58F1AE784000835EE7FB5B1664C0 mb=4 n=1", // md5sum prints lower case
		"DWCP sum=6b7a58f1ae784000835ee7fb5b1664c0 mb=x n=1",
		"DWCP sum=6b7a58f1ae784000835ee7fb5b1664c0aa mb=4 n=1", // too long
	} {
		if c, ok := parseChecksum(bad); ok {
			t.Errorf("parseChecksum(%q) = %+v, want no match", bad, c)
		}
	}
}

func TestParseKV(t *testing.T) {
	m, ok := parseKV("DWCP config mem_mb=205 disk_mb=125 broken =x sum_src=disk", "DWCP config ")
	if !ok || m["mem_mb"] != "205" || m["sum_src"] != "disk" || len(m) != 3 {
		t.Errorf("parseKV = %v, %v", m, ok)
	}
	if _, ok := parseKV("DWCP ready", "DWCP config "); ok {
		t.Error("parseKV matched a line without the prefix")
	}
}

func TestSerialLogFollowsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	s := newSerialLog(path)
	defer s.close()
	if err := s.refresh(); err != nil || s.count() != 0 {
		t.Fatalf("refresh before the file exists: %v, %d lines", err, s.count())
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func(b string) {
		t.Helper()
		if _, err := f.WriteString(b); err != nil {
			t.Fatal(err)
		}
		if err := s.refresh(); err != nil {
			t.Fatal(err)
		}
	}
	write("DWCP hb=0 up=1.00\r\nDWCP h")
	if s.count() != 1 {
		t.Errorf("%d lines, want 1 complete line", s.count())
	}
	write("b=1 up=2.00\r\n")
	if i, m := s.find(1, heartbeatRE); i != 1 || m[1] != "1" {
		t.Errorf("find from line 1 = %d %q", i, m)
	}
	write(strings.Repeat("z", maxSerialLine+10))
	if s.count() != 3 {
		t.Errorf("a line longer than %d bytes was not cut: %d lines", maxSerialLine, s.count())
	}
	if i, _ := s.last(func(l string) bool { return strings.HasPrefix(l, "DWCP hb=0") }); i != 0 {
		t.Errorf("last = %d, want 0", i)
	}
}

// FuzzSerialFeed checks that the lines do not depend on how the console output
// was split into reads, and that the line parsers accept whatever they are given.
func FuzzSerialFeed(f *testing.F) {
	f.Add([]byte("DWCP hb=1 up=2.00\r\nDWCP sum=6b7a58f1ae784000835ee7fb5b1664c0 mb=4 n=0\n"), 5)
	f.Add([]byte("DWCP config mem_mb=1 x\nDWCP ready\n\r\r\n"), 0)
	f.Fuzz(func(t *testing.T, b []byte, cut int) {
		whole := &serialLog{}
		whole.feed(b)
		split := &serialLog{}
		if cut < 0 {
			cut = -cut
		}
		if len(b) > 0 {
			cut %= len(b) + 1
		} else {
			cut = 0
		}
		split.feed(b[:cut])
		split.feed(b[cut:])
		if strings.Join(whole.lines, "\n") != strings.Join(split.lines, "\n") ||
			string(whole.partial) != string(split.partial) {
			t.Fatalf("split at %d changed the lines", cut)
		}
		for _, l := range whole.lines {
			if hb, ok := parseHeartbeat(l); ok && (hb.N < 0 || hb.Up < 0) {
				t.Fatalf("negative heartbeat %+v from %q", hb, l)
			}
			if c, ok := parseChecksum(l); ok && len(c.Sum) != 32 {
				t.Fatalf("checksum %q from %q", c.Sum, l)
			}
			parseKV(l, "DWCP config ")
		}
	})
}
