package testguest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Heartbeat is one "DWCP hb=N up=SECONDS" line of the guest.
type Heartbeat struct {
	N    int           // counts from 0 at guest boot
	Up   time.Duration // guest uptime (/proc/uptime) when it was printed
	Line int           // index of the line in the serial log
}

// Checksum is one "DWCP sum=MD5 mb=M n=K" line of the guest.
type Checksum struct {
	Sum  string // hex MD5 of the fixed region
	MiB  int    // size of the region
	N    int    // how many checksum lines came before this one since boot
	Line int
}

var (
	heartbeatRE = regexp.MustCompile(`DWCP hb=(\d{1,9}) up=(\d{1,9})\.(\d{2})\b`)
	checksumRE  = regexp.MustCompile(`DWCP sum=([0-9a-f]{32}) mb=(\d{1,6}) n=(\d{1,9})\b`)
	readyRE     = regexp.MustCompile(`DWCP ready\b`)
)

// parseHeartbeat recognises a heartbeat anywhere in a line: a kernel message can
// land on the same console line.
func parseHeartbeat(line string) (Heartbeat, bool) {
	m := heartbeatRE.FindStringSubmatch(line)
	if m == nil {
		return Heartbeat{}, false
	}
	n, err1 := strconv.Atoi(m[1])
	sec, err2 := strconv.Atoi(m[2])
	cs, err3 := strconv.Atoi(m[3])
	if err1 != nil || err2 != nil || err3 != nil {
		return Heartbeat{}, false
	}
	up := time.Duration(sec)*time.Second + time.Duration(cs)*10*time.Millisecond
	return Heartbeat{N: n, Up: up}, true
}

func parseChecksum(line string) (Checksum, bool) {
	m := checksumRE.FindStringSubmatch(line)
	if m == nil {
		return Checksum{}, false
	}
	mib, err1 := strconv.Atoi(m[2])
	n, err2 := strconv.Atoi(m[3])
	if err1 != nil || err2 != nil {
		return Checksum{}, false
	}
	return Checksum{Sum: m[1], MiB: mib, N: n}, true
}

// parseKV reads the key=value fields of a "DWCP config ..." or "DWCP mem ..." line.
func parseKV(line, prefix string) (map[string]string, bool) {
	i := strings.Index(line, prefix)
	if i < 0 {
		return nil, false
	}
	m := make(map[string]string)
	for _, f := range strings.Fields(line[i+len(prefix):]) {
		if k, v, ok := strings.Cut(f, "="); ok && k != "" {
			m[k] = v
		}
	}
	return m, true
}

// maxSerialLine bounds one console line kept in memory; a guest printing without
// newlines must not grow the host's memory without limit.
const maxSerialLine = 64 << 10

// serialLog follows QEMU's serial output file. Readers call refresh, which reads
// whatever QEMU appended since the last call; no goroutine tails the file.
type serialLog struct {
	path string

	mu      sync.Mutex
	f       *os.File
	partial []byte
	lines   []string
	buf     []byte
}

func newSerialLog(path string) *serialLog {
	return &serialLog{path: path, buf: make([]byte, 64<<10)}
}

// refresh appends complete new lines. The file may not exist yet right after
// QEMU starts; that is not an error.
func (s *serialLog) refresh() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		f, err := os.Open(s.path)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("open serial log: %w", err)
		}
		s.f = f
	}
	for {
		n, err := s.f.Read(s.buf)
		if n > 0 {
			s.feed(s.buf[:n])
		}
		if err == io.EOF || n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read serial log: %w", err)
		}
	}
}

func (s *serialLog) feed(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		chunk := b
		if i >= 0 {
			chunk = b[:i]
		}
		// An over-long line is cut at exactly maxSerialLine bytes, so the lines do
		// not depend on how the output was split into reads.
		if room := maxSerialLine - len(s.partial); len(chunk) > room {
			s.partial = append(s.partial, chunk[:room]...)
			s.emit()
			b = b[room:]
			continue
		}
		s.partial = append(s.partial, chunk...)
		if i < 0 {
			return
		}
		s.emit()
		b = b[i+1:]
	}
}

func (s *serialLog) emit() {
	s.lines = append(s.lines, cleanLine(s.partial))
	s.partial = s.partial[:0]
}

// cleanLine drops the console's carriage returns and trailing blanks.
func cleanLine(b []byte) string {
	return strings.TrimRight(strings.ReplaceAll(string(b), "\r", ""), " \t")
}

// find returns the index and submatches of the first line at or after from that
// matches re, or -1.
func (s *serialLog) find(from int, re *regexp.Regexp) (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := max(from, 0); i < len(s.lines); i++ {
		if m := re.FindStringSubmatch(s.lines[i]); m != nil {
			return i, m
		}
	}
	return -1, nil
}

// last returns the last line (and its index) for which ok returns true.
func (s *serialLog) last(ok func(string) bool) (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.lines) - 1; i >= 0; i-- {
		if ok(s.lines[i]) {
			return i, s.lines[i]
		}
	}
	return -1, ""
}

// linesFrom returns up to n lines starting at index i.
func (s *serialLog) linesFrom(i, n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < 0 || i >= len(s.lines) {
		return ""
	}
	return strings.Join(s.lines[i:min(i+n, len(s.lines))], "\n")
}

func (s *serialLog) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lines)
}

func (s *serialLog) tailText(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines := s.lines[max(len(s.lines)-n, 0):]
	out := strings.Join(lines, "\n")
	if len(s.partial) > 0 {
		out += "\n" + cleanLine(s.partial)
	}
	return out
}

func (s *serialLog) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
}
