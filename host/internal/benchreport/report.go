// Package benchreport measures DWCP on the machine it runs on and writes the
// performance validation report: Markdown tables and SVG charts, every figure
// with how it was obtained, every timing compared as a ratio against a
// baseline measured in the same run.
//
// It owns the report's model (sections, tables, figures), its statistics,
// the machine description, the Markdown and chart writers, the checker that
// proves a written report is complete, and the sections themselves. It must
// not contain a number that was not measured by this run: a row that cannot
// be measured here carries the reason instead of a value.
package benchreport

import (
	"fmt"
	"strings"
	"time"
)

// Report is one run's result.
type Report struct {
	Title    string
	Quick    bool
	Machine  Machine
	Started  time.Time
	Duration time.Duration
	Sections []*Section
}

// Section is one numbered part of the report.
type Section struct {
	Title string
	Intro string
	Items []Item
	// Err is set when the section could not run to the end; what it
	// measured before that is kept.
	Err error
}

// Add appends items to the section.
func (s *Section) Add(items ...Item) { s.Items = append(s.Items, items...) }

// Note adds a paragraph.
func (s *Section) Note(format string, args ...any) {
	s.Items = append(s.Items, Paragraph(fmt.Sprintf(format, args...)))
}

// Item is a table, a figure or a paragraph.
type Item interface{ item() }

// Paragraph is free text (Markdown).
type Paragraph string

func (Paragraph) item() {}

// Table is a measured table. How says how every number in it was obtained
// (input, settings, runs); it is printed under the table.
type Table struct {
	Title   string
	How     string
	Columns []string
	Rows    [][]Cell
}

func (*Table) item() {}

// AddRow appends a row; it must have one cell per column.
func (t *Table) AddRow(cells ...Cell) { t.Rows = append(t.Rows, cells) }

// Cell is a measured value or the reason it is missing.
type Cell struct {
	Text string
	// Missing, when set, says why there is no value (Text is ignored).
	Missing string
}

// Text is a cell holding a label or an already formatted value.
func Text(s string) Cell { return Cell{Text: s} }

// Textf formats a cell.
func Textf(format string, args ...any) Cell { return Cell{Text: fmt.Sprintf(format, args...)} }

// Missing is a cell that could not be measured, with the reason.
func Missing(reason string) Cell { return Cell{Missing: reason} }

// Num formats a number with the given decimals.
func Num(v float64, decimals int) Cell { return Cell{Text: fmt.Sprintf("%.*f", decimals, v)} }

// Ratio formats a ratio as "1.23x".
func Ratio(v float64) Cell { return Cell{Text: fmt.Sprintf("%.2fx", v)} }

// Percent formats a fraction (0.5) as "50.0 %".
func Percent(frac float64) Cell { return Cell{Text: fmt.Sprintf("%.1f %%", 100*frac)} }

// Bytes formats a byte count with a binary unit.
func Bytes(n float64) Cell { return Cell{Text: FormatBytes(n)} }

// FormatBytes renders n bytes as B, KiB, MiB or GiB.
func FormatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f B", n)
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// Figure is a chart written next to the report.
type Figure struct {
	Title string
	// File is the chart's file name inside the output folder.
	File string
	How  string
	// Chart draws it; the runner calls it when writing the report.
	Chart Chart
}

func (*Figure) item() {}

// String is a short description for logs.
func (r *Report) String() string {
	var b strings.Builder
	for _, s := range r.Sections {
		fmt.Fprintf(&b, "%s: %d items", s.Title, len(s.Items))
		if s.Err != nil {
			fmt.Fprintf(&b, " (error: %v)", s.Err)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
