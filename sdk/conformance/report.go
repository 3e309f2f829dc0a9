package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// Status is the outcome of one check.
type Status int

const (
	// StatusPass: the plugin behaved as the contract requires.
	StatusPass Status = iota
	// StatusFail: the plugin broke the contract; Message says how.
	StatusFail
	// StatusSkip: the check does not apply to this plugin or could not run
	// (for example the context ended); Message says why.
	StatusSkip
)

func (s Status) String() string {
	switch s {
	case StatusPass:
		return "PASS"
	case StatusFail:
		return "FAIL"
	case StatusSkip:
		return "SKIP"
	}
	return fmt.Sprintf("Status(%d)", int(s))
}

// MarshalText makes a Status read as PASS, FAIL or SKIP in JSON reports.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (s *Status) UnmarshalText(b []byte) error {
	for _, v := range []Status{StatusPass, StatusFail, StatusSkip} {
		if string(b) == v.String() {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("conformance status %q: want PASS, FAIL or SKIP", b)
}

// Result is the outcome of one named check.
type Result struct {
	// Name is slash-separated, group first ("roundtrip/level=3").
	Name    string
	Status  Status
	Message string
	Elapsed time.Duration
}

// Report collects the results of a conformance run. Its String method is the
// verdict a plugin author reads; OK tells a program whether to fail.
type Report struct {
	// Subject names what was checked, e.g. `codec "zstd" (in-process)`.
	Subject string
	Results []Result
}

// Add appends a result.
func (r *Report) Add(res Result) { r.Results = append(r.Results, res) }

// Merge appends every result of o, its names prefixed with prefix + "/".
func (r *Report) Merge(prefix string, o Report) {
	for _, res := range o.Results {
		if prefix != "" {
			res.Name = prefix + "/" + res.Name
		}
		r.Results = append(r.Results, res)
	}
}

// Counts returns how many checks passed, failed and were skipped.
func (r Report) Counts() (passed, failed, skipped int) {
	for _, res := range r.Results {
		switch res.Status {
		case StatusPass:
			passed++
		case StatusFail:
			failed++
		default:
			skipped++
		}
	}
	return passed, failed, skipped
}

// OK reports whether no check failed. A report with no results is not OK:
// nothing was verified.
func (r Report) OK() bool {
	p, f, _ := r.Counts()
	return f == 0 && p > 0
}

// Failures returns the failed results.
func (r Report) Failures() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Status == StatusFail {
			out = append(out, res)
		}
	}
	return out
}

// Err returns nil when the report is OK, else an error naming the failed
// checks (for a CLI's exit status).
func (r Report) Err() error {
	if r.OK() {
		return nil
	}
	fails := r.Failures()
	if len(fails) == 0 {
		return fmt.Errorf("conformance %s: no check passed", r.Subject)
	}
	names := make([]string, 0, len(fails))
	for _, f := range fails {
		names = append(names, f.Name)
	}
	return fmt.Errorf("conformance %s: %d check(s) failed: %s", r.Subject, len(fails), strings.Join(names, ", "))
}

// String renders the report as a readable verdict: one line per check, the
// message indented under it, and a closing verdict line.
func (r Report) String() string {
	var b strings.Builder
	_, _ = r.WriteTo(&b)
	return b.String()
}

// WriteTo writes the String form to w.
func (r Report) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "conformance: %s\n", r.Subject)
	for _, res := range r.Results {
		fmt.Fprintf(&b, "  %s  %s (%s)\n", res.Status, res.Name, res.Elapsed.Round(time.Millisecond))
		if res.Message != "" {
			for _, line := range strings.Split(strings.TrimRight(res.Message, "\n"), "\n") {
				fmt.Fprintf(&b, "        %s\n", line)
			}
		}
	}
	p, f, s := r.Counts()
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "verdict: %s (%d passed, %d failed, %d skipped)\n", verdict, p, f, s)
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// check is one named, independently runnable piece of a suite. Suites build
// a list of them so that Check* (a Report) and Test* (subtests) run the very
// same code.
type check struct {
	name string
	run  func(ctx context.Context, s *state)
}

// maxFailureLines bounds how many failures a check lists: a broken decoder
// can fail thousands of cases and the first few say what is wrong.
const maxFailureLines = 8

// state is what a running check records into.
type state struct {
	failures int
	lines    []string
	skip     string
	notes    []string
}

func (s *state) failf(format string, args ...any) {
	s.failures++
	if len(s.lines) < maxFailureLines {
		s.lines = append(s.lines, fmt.Sprintf(format, args...))
	}
}

func (s *state) skipf(format string, args ...any) { s.skip = fmt.Sprintf(format, args...) }

func (s *state) notef(format string, args ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}

// failed reports whether any failure was recorded, so a check can stop
// piling up consequences of the first fault.
func (s *state) failed() bool { return s.failures > 0 }

// runCheck runs one check, turning a panic into a failure that carries the
// stack: the kit's promise is that a misbehaving plugin is reported, never
// that it takes the test binary down.
func runCheck(ctx context.Context, c check) (res Result) {
	res.Name = c.name
	start := time.Now()
	s := &state{}
	defer func() {
		res.Elapsed = time.Since(start)
		if p := recover(); p != nil {
			s.failf("panic: %v\n%s", p, debug.Stack())
		}
		res.Status, res.Message = s.verdict()
	}()
	if err := ctx.Err(); err != nil {
		s.skipf("not run: %v", err)
		return res
	}
	c.run(ctx, s)
	return res
}

func (s *state) verdict() (Status, string) {
	if s.failures > 0 {
		msg := strings.Join(s.lines, "\n")
		if more := s.failures - len(s.lines); more > 0 {
			msg += fmt.Sprintf("\n... and %d more failure(s)", more)
		}
		return StatusFail, msg
	}
	if s.skip != "" {
		return StatusSkip, s.skip
	}
	return StatusPass, strings.Join(s.notes, "\n")
}

// runAll runs checks in order into a report.
func runAll(ctx context.Context, subject string, checks []check) Report {
	r := Report{Subject: subject}
	for _, c := range checks {
		r.Add(runCheck(ctx, c))
	}
	return r
}

// runTests runs checks as nested subtests: "group/name" becomes
// t.Run(group) then t.Run(name), so `go test -run` can select them.
func runTests(t *testing.T, checks []check) {
	t.Helper()
	for len(checks) > 0 {
		group, _, _ := strings.Cut(checks[0].name, "/")
		n := 1
		for n < len(checks) && groupOf(checks[n].name) == group {
			n++
		}
		batch := checks[:n]
		checks = checks[n:]
		t.Run(group, func(t *testing.T) {
			for _, c := range batch {
				_, sub, ok := strings.Cut(c.name, "/")
				if !ok {
					reportToT(t, runCheck(t.Context(), c))
					continue
				}
				t.Run(sub, func(t *testing.T) { reportToT(t, runCheck(t.Context(), c)) })
			}
		})
	}
}

func groupOf(name string) string {
	g, _, _ := strings.Cut(name, "/")
	return g
}

func reportToT(t *testing.T, res Result) {
	t.Helper()
	switch res.Status {
	case StatusFail:
		t.Error(res.Message)
	case StatusSkip:
		t.Skip(res.Message)
	default:
		if res.Message != "" {
			t.Log(res.Message)
		}
	}
}

// errIsAny reports whether err wraps one of targets.
func errIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
