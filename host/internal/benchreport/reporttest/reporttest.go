// Package reporttest holds the helpers the report parts' tests share for
// reading a written report back. Test support only.
package reporttest

import (
	"strconv"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/host/internal/benchreport"
)

// Column is the index of the column named name; the test fails without it.
func Column(t testing.TB, tab benchreport.ParsedTable, name string) int {
	t.Helper()
	for i, c := range tab.Columns {
		if c == name {
			return i
		}
	}
	t.Fatalf("table %q has no column %q: %q", tab.Title, name, tab.Columns)
	return -1
}

// Number reads the number a cell starts with: "12.3 (10.1–14.0, n=3)",
// "0.45x", "3.1 %". The test fails when there is none.
func Number(t testing.TB, cell string) float64 {
	t.Helper()
	f := strings.Fields(cell)
	if len(f) == 0 {
		t.Fatalf("empty cell")
	}
	v, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "x"), 64)
	if err != nil {
		t.Fatalf("cell %q does not start with a number: %v", cell, err)
	}
	return v
}
