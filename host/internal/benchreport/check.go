package benchreport

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// ParsedTable is a table read back from a written report.
type ParsedTable struct {
	Title   string // the ### heading above it, if any
	Line    int
	Columns []string
	Rows    [][]string
}

// ParsedReport is what Parse reads from report.md.
type ParsedReport struct {
	Sections []string // "N. Title"
	Tables   []ParsedTable
	Images   []string // chart files referenced
	Notes    []string // paragraphs
}

var imageRe = regexp.MustCompile(`^!\[[^\]]*\]\(([^)]+)\)$`)

// Parse reads a report written by WriteMarkdown.
func Parse(md []byte) (*ParsedReport, error) {
	p := &ParsedReport{}
	sc := bufio.NewScanner(bytes.NewReader(md))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var heading string
	var cur *ParsedTable
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if !strings.HasPrefix(line, "|") && cur != nil {
			p.Tables = append(p.Tables, *cur)
			cur = nil
			heading = ""
		}
		switch {
		case strings.HasPrefix(line, "## "):
			p.Sections = append(p.Sections, strings.TrimPrefix(line, "## "))
			heading = ""
		case strings.HasPrefix(line, "### "):
			heading = strings.TrimPrefix(line, "### ")
		case strings.HasPrefix(line, "|"):
			cells, err := splitRow(line)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			switch {
			case cur == nil:
				cur = &ParsedTable{Title: heading, Line: n, Columns: cells}
			case len(cur.Rows) == 0 && isRule(cells):
				// the header rule
			default:
				cur.Rows = append(cur.Rows, cells)
			}
		default:
			if m := imageRe.FindStringSubmatch(line); m != nil {
				p.Images = append(p.Images, m[1])
			} else if strings.TrimSpace(line) != "" {
				p.Notes = append(p.Notes, line)
			}
		}
	}
	if cur != nil {
		p.Tables = append(p.Tables, *cur)
	}
	return p, sc.Err()
}

func isRule(cells []string) bool {
	for _, c := range cells {
		if strings.Trim(c, "-: ") != "" {
			return false
		}
	}
	return true
}

// splitRow splits "| a | b \| c |" into cells, honouring escaped pipes.
func splitRow(line string) ([]string, error) {
	line = strings.TrimSpace(line)
	if !strings.HasPrefix(line, "|") || !strings.HasSuffix(line, "|") || len(line) < 2 {
		return nil, fmt.Errorf("malformed table row %q", line)
	}
	var cells []string
	var b strings.Builder
	body := line[1 : len(line)-1]
	for i := 0; i < len(body); i++ {
		switch {
		case body[i] == '\\' && i+1 < len(body) && body[i+1] == '|':
			b.WriteByte('|')
			i++
		case body[i] == '|':
			cells = append(cells, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(body[i])
		}
	}
	return append(cells, strings.TrimSpace(b.String())), nil
}

// Table returns the table with this title.
func (p *ParsedReport) Table(title string) (ParsedTable, bool) {
	for _, t := range p.Tables {
		if t.Title == title {
			return t, true
		}
	}
	return ParsedTable{}, false
}

// Check reads dir/report.md and verifies that it is complete for specs:
// every section and promised table present, every table well formed with
// no empty cell (a cell without a value states why, "n/a: reason"), every
// promised chart either written as an SVG file or replaced by a note that
// says why, and every referenced chart file present.
func Check(dir string, specs []SectionSpec) (*ParsedReport, error) {
	md, err := os.ReadFile(filepath.Join(dir, ReportFile))
	if err != nil {
		return nil, err
	}
	p, err := Parse(md)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, spec := range specs {
		found := false
		for _, s := range p.Sections {
			if strings.HasSuffix(s, ". "+spec.Title) {
				found = true
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("section %q missing", spec.Title))
		}
		for _, t := range spec.Tables {
			if _, ok := p.Table(t); !ok {
				errs = append(errs, fmt.Errorf("section %q: table %q missing", spec.Title, t))
			}
		}
		for _, f := range spec.Figures {
			if !slices.Contains(p.Images, f) && !ContainsPrefix(p.Notes, "Chart "+f+" ") && !ContainsPrefix(p.Notes, "Chart "+f+":") {
				errs = append(errs, fmt.Errorf("section %q: chart %s neither drawn nor explained", spec.Title, f))
			}
		}
	}
	for _, t := range p.Tables {
		for i, row := range t.Rows {
			if len(row) != len(t.Columns) {
				errs = append(errs, fmt.Errorf("table %q (line %d) row %d: %d cells for %d columns", t.Title, t.Line, i+1, len(row), len(t.Columns)))
				continue
			}
			for j, c := range row {
				reason, isMissing := strings.CutPrefix(c, strings.TrimSpace(missingPrefix))
				switch {
				case c == "":
					errs = append(errs, fmt.Errorf("table %q row %d column %q: empty cell", t.Title, i+1, t.Columns[j]))
				case isMissing && len(strings.TrimSpace(reason)) < 3:
					errs = append(errs, fmt.Errorf("table %q row %d column %q: missing value without a reason", t.Title, i+1, t.Columns[j]))
				case strings.Contains(c, "report bug"):
					errs = append(errs, fmt.Errorf("table %q row %d column %q: %s", t.Title, i+1, t.Columns[j], c))
				}
			}
		}
	}
	for _, img := range p.Images {
		b, err := os.ReadFile(filepath.Join(dir, img))
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("chart %s: %w", img, err))
		case !bytes.Contains(b[:min(len(b), 512)], []byte("<svg")):
			errs = append(errs, fmt.Errorf("chart %s: not an SVG file", img))
		}
	}
	return p, errors.Join(errs...)
}

// ContainsPrefix tells whether any of list starts with prefix (for reading
// a report's notes back).
func ContainsPrefix(list []string, prefix string) bool {
	return slices.ContainsFunc(list, func(v string) bool { return strings.HasPrefix(v, prefix) })
}
