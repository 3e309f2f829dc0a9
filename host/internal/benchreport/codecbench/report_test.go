package codecbench

import (
	"bytes"
	"context"
	"github.com/dwcp/dwcp/host/internal/benchreport/reporttest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/testguest"
)

// TestPartsQuick runs the three parts as `dwcp bench report --quick` does,
// with plugins built from this tree and the real streams of the test guest,
// checks the written report with benchreport.Check and asserts on what the
// tables say.
func TestPartsQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("about a minute of measurements; skipped in -short mode")
	}
	if raceEnabled {
		t.Skip("the race detector makes the measurements take many minutes; the harness is covered by the unit tests")
	}
	testguest.RequireStreams(t)
	dir := t.TempDir()
	specs := []benchreport.SectionSpec{
		benchreport.Compose("dc", "Datacenter", "", Datacenter),
		benchreport.Compose("inet", "Internet", "", InternetCodecs),
		benchreport.Compose("sota", "State of the art", "", CLITools),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var log bytes.Buffer
	start := time.Now()
	_, err := benchreport.Run(ctx, benchreport.Options{Quick: true, Out: dir, PluginDir: pluginDir(t), Progress: &log}, specs)
	t.Logf("quick run took %s\n%s", time.Since(start).Round(time.Second), log.String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := benchreport.Check(dir, specs)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		md, _ := os.ReadFile(filepath.Join(dir, benchreport.ReportFile))
		t.Logf("%s", md)
	}

	tp := table(t, p, TitleDCThroughput)
	for _, want := range []string{"64.0 KiB prefix", "256.0 KiB prefix", "1.0 MiB prefix", "10.0 MiB prefix", "whole stream (QEMU-aware)"} {
		row := rowOf(t, tp, want)
		if v := reporttest.Number(t, cell(t, tp, row, "DWCP MB/s")); v <= 0 {
			t.Errorf("throughput %s: DWCP %v MB/s", want, v)
		}
		if v := reporttest.Number(t, cell(t, tp, row, "TCP relay MB/s")); v <= 0 {
			t.Errorf("throughput %s: relay %v MB/s", want, v)
		}
	}
	if r := reporttest.Number(t, cell(t, tp, rowOf(t, tp, "whole stream (QEMU-aware)"), "stream ÷ wire bytes")); r < 1.5 {
		t.Errorf("datacenter pipeline on the real stream: ratio %v, want > 1.5", r)
	}

	lt := table(t, p, TitleDCLatency)
	if len(lt.Rows) != 6 {
		t.Errorf("latency table: %d rows, want 2 codecs x 3 sizes", len(lt.Rows))
	}
	for i := range lt.Rows {
		p50, p95 := reporttest.Number(t, cell(t, lt, i, "compress P50 ms")), reporttest.Number(t, cell(t, lt, i, "compress P95 ms"))
		if p50 <= 0 || p95 < p50 {
			t.Errorf("latency row %v: P50 %v P95 %v", lt.Rows[i], p50, p95)
		}
	}

	st := table(t, p, TitleDCSessions)
	if len(st.Rows) != 9 {
		t.Errorf("sessions table: %d rows, want 3 counts x 3 paths", len(st.Rows))
	}
	for i := range st.Rows {
		if cell(t, st, i, "path") == "DWCP" && reporttest.Number(t, cell(t, st, i, "CPU ms per MB")) <= 0 {
			t.Errorf("sessions row %v: DWCP used no CPU", st.Rows[i])
		}
	}

	pt := table(t, p, TitlePatterns)
	ratioOf := func(name string) float64 { return reporttest.Number(t, cell(t, pt, rowOf(t, pt, name), "ratio")) }
	if r := ratioOf("zeros"); r < 100 {
		t.Errorf("zeros through the internet pipeline: ratio %v, want > 100", r)
	}
	if r := ratioOf("random"); r < 0.95 || r > 1.1 {
		t.Errorf("random through the internet pipeline: ratio %v, want about 1", r)
	}
	if r := ratioOf("real VM stream"); r < 2 {
		t.Errorf("real stream through the internet pipeline: ratio %v, want > 2", r)
	}

	tt := table(t, p, TitleTiers)
	local, global := reporttest.Number(t, cell(t, tt, rowOf(t, tt, "local"), "ratio")), reporttest.Number(t, cell(t, tt, rowOf(t, tt, "global"), "ratio"))
	if global <= local {
		t.Errorf("global tier ratio %v not above local %v: the internet plan should trade speed for bytes", global, local)
	}

	dt := table(t, p, TitleDelta)
	if len(dt.Rows) != 6 {
		t.Errorf("delta table: %d rows, want 6", len(dt.Rows))
	}
	if r := reporttest.Number(t, cell(t, dt, rowOf(t, dt, "1 % (one contiguous run)"), "full ÷ delta bytes")); r < 5 {
		t.Errorf("delta of pages with 1 %% changed in one run: %vx smaller than full compression, want > 5", r)
	}

	ct := table(t, p, TitleCLI)
	if len(ct.Rows) != len(patternNames)*len(cliSettings) {
		t.Errorf("CLI table: %d rows, want %d", len(ct.Rows), len(patternNames)*len(cliSettings))
	}
	for i := range ct.Rows {
		if cell(t, ct, i, "input") == "zeros" && reporttest.Number(t, cell(t, ct, i, "plugin ratio")) < 50 {
			t.Errorf("CLI row %v: plugin ratio on zeros below 50", ct.Rows[i])
		}
	}
}

func table(t *testing.T, p *benchreport.ParsedReport, title string) benchreport.ParsedTable {
	t.Helper()
	tb, ok := p.Table(title)
	if !ok {
		t.Fatalf("table %q missing", title)
	}
	return tb
}

func rowOf(t *testing.T, tb benchreport.ParsedTable, first string) int {
	t.Helper()
	for i, r := range tb.Rows {
		if len(r) > 0 && r[0] == first {
			return i
		}
	}
	t.Fatalf("table %q has no row %q", tb.Title, first)
	return -1
}

func cell(t *testing.T, tb benchreport.ParsedTable, row int, col string) string {
	t.Helper()
	for j, c := range tb.Columns {
		if c == col {
			return tb.Rows[row][j]
		}
	}
	t.Fatalf("table %q has no column %q", tb.Title, col)
	return ""
}
