package benchreport

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{5, 1, 3, 2, 4})
	if s.N != 5 || s.Min != 1 || s.Max != 5 || s.Median != 3 || s.Mean != 3 {
		t.Fatalf("summary %+v", s)
	}
	if got := s.P95; math.Abs(got-4.8) > 1e-9 {
		t.Fatalf("p95 = %v, want 4.8", got)
	}
	if Summarize(nil).N != 0 {
		t.Fatal("empty input has samples")
	}
	if c := Summarize(nil).Cell(1, "s"); c.Missing == "" {
		t.Fatalf("empty summary renders a value: %+v", c)
	}
	if c := Summarize([]float64{1, 2, 4}).Cell(1, "s"); c.Text != "2.0 s (1.0–4.0, n=3)" {
		t.Fatalf("cell %q", c.Text)
	}
}

func TestFormatBytes(t *testing.T) {
	for in, want := range map[float64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 1.5 * (1 << 30): "1.5 GiB"} {
		if got := FormatBytes(in); got != want {
			t.Errorf("FormatBytes(%v) = %q, want %q", in, got, want)
		}
	}
}

// testSpecs measure nothing real: they exercise the writer and the
// checker with fixed inputs, which is what these tests are about.
func testSpecs(failSecond bool) []SectionSpec {
	return []SectionSpec{
		Compose("one", "First | section", "Intro text.", Part{
			Name:    "values",
			Tables:  []string{"Values"},
			Figures: []string{"one-bars.svg", "one-lines.svg"},
			Run: func(ctx context.Context, env *Env, s *Section) error {
				t := &Table{Title: "Values", How: "fixed inputs of the test", Columns: []string{"name", "value", "pipe"}}
				t.AddRow(Text("a"), Num(1.5, 1), Text("x|y"))
				t.AddRow(Text("b"), Missing("no tool here"), Ratio(2))
				s.Add(t)
				s.Add(&Figure{Title: "Bars", File: "one-bars.svg", How: "test", Chart: &BarChart{Title: "Bars", YLabel: "v",
					Categories: []string{"a", "b"}, Series: []Series{{Name: "s1", Values: []float64{1, 2}}, {Name: "s2", Values: []float64{3, math.NaN()}}}}})
				s.Add(&Figure{Title: "Lines", File: "one-lines.svg", How: "test", Chart: &LineChart{Title: "Lines", X: []float64{64 << 10, 1 << 20},
					XTicks: []string{"64K", "1M"}, LogX: true, Series: []Series{{Name: "s", Values: []float64{10, 20}}}}})
				return nil
			},
		}),
		{Key: "two", Title: "Second", Tables: []string{"Promised", "Also promised"}, Figures: []string{"two.svg"},
			Run: func(ctx context.Context, env *Env, s *Section) error {
				t := &Table{Title: "Promised", Columns: []string{"x"}}
				t.AddRow(Text("measured before the failure"))
				s.Add(t)
				if failSecond {
					panic("boom")
				}
				return nil
			}},
	}
}

func TestRunWriteCheck(t *testing.T) {
	dir := t.TempDir()
	specs := testSpecs(true)
	_, err := Run(context.Background(), Options{Out: dir, Quick: true}, specs)
	if err == nil || !strings.Contains(err.Error(), "two") {
		t.Fatalf("a failed section must fail the run, naming it: %v", err)
	}
	p, err := Check(dir, specs)
	if err != nil {
		t.Fatalf("a report with a failed section is still complete (the failure is stated): %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, ReportFile))
	for _, want := range []string{"panic: boom", "n/a: no tool here", "x|y", "## Machine", "quick run", "Chart two.svg: not measured: the section failed"} {
		if !strings.Contains(strings.ReplaceAll(string(md), `\|`, "|"), want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	vals, ok := p.Table("Values")
	if !ok || len(vals.Rows) != 2 || vals.Rows[0][2] != "x|y" || vals.Rows[1][1] != "n/a: no tool here" {
		t.Fatalf("Values table read back wrong: %+v", vals)
	}
	if also, ok := p.Table("Also promised"); !ok || !strings.HasPrefix(also.Rows[0][0], "n/a: not measured: the section failed") {
		t.Fatalf("promised table not filled in with the reason: %+v", also)
	}
	for _, f := range []string{"one-bars.svg", "one-lines.svg"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || !strings.Contains(string(b), "<svg") {
			t.Errorf("chart %s: %v", f, err)
		}
	}
}

func TestCheckFindsProblems(t *testing.T) {
	dir := t.TempDir()
	specs := testSpecs(false)
	if _, err := Run(context.Background(), Options{Out: dir}, specs); err != nil {
		t.Fatal(err)
	}
	if _, err := Check(dir, specs); err != nil {
		t.Fatalf("complete report rejected: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, ReportFile))
	damage := map[string]func(string) string{
		"empty cell":      func(s string) string { return strings.Replace(s, "| 1.5 |", "|  |", 1) },
		"lost reason":     func(s string) string { return strings.Replace(s, "n/a: no tool here", "n/a: ", 1) },
		"short row":       func(s string) string { return strings.Replace(s, "| 1.5 |", "", 1) },
		"missing table":   func(s string) string { return strings.Replace(s, "### Values", "### Renamed", 1) },
		"missing section": func(s string) string { return strings.Replace(s, "## 2. Second", "## 2. Other", 1) },
		"missing chart":   func(s string) string { return strings.Replace(s, "(one-bars.svg)", "(gone.svg)", 1) },
	}
	for name, f := range damage {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			for _, n := range []string{"one-bars.svg", "one-lines.svg"} {
				b, _ := os.ReadFile(filepath.Join(dir, n))
				os.WriteFile(filepath.Join(d, n), b, 0o644)
			}
			if err := os.WriteFile(filepath.Join(d, ReportFile), []byte(f(string(md))), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Check(d, specs); err == nil {
				t.Fatal("damaged report passed the check")
			}
		})
	}
}

func TestChartErrorsBecomeNotes(t *testing.T) {
	dir := t.TempDir()
	spec := SectionSpec{Key: "c", Title: "C", Figures: []string{"bad.svg"}, Run: func(ctx context.Context, env *Env, s *Section) error {
		s.Add(&Figure{Title: "Bad", File: "bad.svg", Chart: &BarChart{Title: "empty"}})
		return nil
	}}
	if _, err := Run(context.Background(), Options{Out: dir}, []SectionSpec{spec}); err != nil {
		t.Fatal(err)
	}
	p, err := Check(dir, []SectionSpec{spec})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Images) != 0 || !ContainsPrefix(p.Notes, "Chart bad.svg could not be drawn") {
		t.Fatalf("undrawable chart not explained: %+v", p.Notes)
	}
}

func TestMemoRunsOnce(t *testing.T) {
	env := &Env{}
	calls := 0
	for range 3 {
		v, err := env.Memo("k", func() (any, error) { calls++; return 42, errors.New("kept") })
		if v != 42 || err == nil || err.Error() != "kept" {
			t.Fatalf("memo returned %v %v", v, err)
		}
	}
	if calls != 1 {
		t.Fatalf("f ran %d times", calls)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("# t\n\n## 1. A\n\n### T\n\n| a | b |\n| --- | --- |\n| 1 | n/a: why \\| not |\n\n![c](c.svg)\n"))
	f.Add([]byte("|"))
	f.Add([]byte("| a |\n|\n"))
	f.Fuzz(func(t *testing.T, md []byte) {
		p, err := Parse(md)
		if err != nil {
			return
		}
		for _, tb := range p.Tables {
			if tb.Columns == nil {
				t.Fatal("table without header")
			}
		}
	})
}
