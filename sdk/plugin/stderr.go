package plugin

import (
	"bytes"
	"strings"
	"sync"
)

// stderrTail keeps the last lines a plugin wrote to stderr, so that a crash
// can be reported with the plugin's own last words (a Go panic included).
type stderrTail struct {
	mu    sync.Mutex
	lines []string
	max   int
	part  []byte
	// panicked holds the first lines of a Go panic or fatal error, which
	// a long goroutine dump would otherwise push out of lines.
	panicked []string
}

// panicLines is how much of a panic report is pinned.
const panicLines = 12

func newStderrTail(max int) *stderrTail { return &stderrTail{max: max} }

func (t *stderrTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	data := append(t.part, p...)
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		t.push(string(data[:i]))
		data = data[i+1:]
	}
	t.part = append(t.part[:0], data...)
	return len(p), nil
}

func (t *stderrTail) push(line string) {
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return
	}
	switch {
	case t.panicked == nil && (strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")):
		t.panicked = []string{line}
	case t.panicked != nil && len(t.panicked) < panicLines:
		t.panicked = append(t.panicked, line)
	}
	if len(t.lines) == t.max {
		copy(t.lines, t.lines[1:])
		t.lines = t.lines[:t.max-1]
	}
	t.lines = append(t.lines, line)
}

// Lines returns the start of a panic report if there was one, then the
// last lines, oldest first.
func (t *stderrTail) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	skip := 0
	if t.panicked != nil {
		out = append(out, t.panicked...)
		out = append(out, "...")
		// Do not repeat pinned lines that are still in the tail.
		for skip < len(t.lines) && skip < len(t.panicked) && t.lines[skip] == t.panicked[skip] {
			skip++
		}
		if skip == len(t.panicked) {
			out = out[:0]
			skip = 0
		}
	}
	out = append(out, t.lines[skip:]...)
	if len(t.part) > 0 {
		out = append(out, string(t.part))
	}
	return out
}
