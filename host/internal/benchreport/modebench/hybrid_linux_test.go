//go:build linux

package modebench

import (
	"context"
	"github.com/dwcp/dwcp/host/internal/benchreport/reporttest"
	"github.com/dwcp/dwcp/host/internal/buildtest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/wanlab"
)

// logWriter sends the run's progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestHybridQuick runs the part in quick mode in the WAN lab with real
// plugins and checks the written report: every promised table and chart,
// a row per lab profile, per switch scenario and per policy, and numbers
// where numbers belong.
func TestHybridQuick(t *testing.T) {
	wanlab.SkipUnlessAvailable(t)
	if raceEnabled {
		t.Skip("the lab run takes many minutes under -race; run without -race (make test does)")
	}
	if testing.Short() {
		t.Skip("builds the plugins and runs the WAN lab for about a minute")
	}
	_, plugins := buildtest.Product(t, buildtest.Zstd, buildtest.S2, buildtest.LZ4)
	out := t.TempDir()
	specs := []benchreport.SectionSpec{benchreport.Compose("hybrid", "Hybrid mode", "", Hybrid)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if _, err := benchreport.Run(ctx, benchreport.Options{Quick: true, Out: out, PluginDir: plugins, Progress: logWriter{t}}, specs); err != nil {
		t.Fatal(err)
	}
	t.Logf("quick part took %v", time.Since(start).Round(time.Second))
	rep, err := benchreport.Check(out, specs)
	if err != nil {
		md, _ := os.ReadFile(filepath.Join(out, benchreport.ReportFile))
		t.Fatalf("%v\n%s", err, md)
	}
	md, _ := os.ReadFile(filepath.Join(out, benchreport.ReportFile))
	t.Logf("report:\n%s", md)
	for _, f := range Hybrid.Figures {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("chart %s not written: %v", f, err)
		}
	}

	det, _ := rep.Table(TitleDetection)
	profiles := wanlab.Profiles()
	if len(det.Rows) != len(profiles) {
		t.Fatalf("detection table has %d rows for %d profiles", len(det.Rows), len(profiles))
	}
	acc := reporttest.Column(t, det, "accuracy")
	exp := reporttest.Column(t, det, "expected mode (settings vs thresholds)")
	for i, p := range profiles {
		row := det.Rows[i]
		if row[0] != p.Name {
			t.Errorf("row %d is %q, want profile %q", i, row[0], p.Name)
		}
		if a := reporttest.Number(t, row[acc]); a < 0 || a > 100 {
			t.Errorf("%s: accuracy %v outside 0..100", p.Name, a)
		}
		if p.Name == "dc" && row[exp] != modes.Datacenter.String() {
			t.Errorf("dc expected %q, want datacenter", row[exp])
		}
		if p.Name == "internet" && row[exp] != modes.Internet.String() {
			t.Errorf("internet expected %q, want internet", row[exp])
		}
	}

	sw, _ := rep.Table(TitleSwitch)
	if len(sw.Rows) != len(switchScenarios) {
		t.Fatalf("switch table has %d rows, want %d", len(sw.Rows), len(switchScenarios))
	}
	for _, row := range sw.Rows {
		if strings.HasPrefix(row[2], "n/a") {
			t.Errorf("switch scenario %q not measured: %v", row[0], row)
		}
	}

	ad, _ := rep.Table(TitleAdaptive)
	if len(ad.Rows) < 4 {
		t.Fatalf("adaptive table has %d rows: want plain TCP, the fixed steps and the controller", len(ad.Rows))
	}
	vsPlain := reporttest.Column(t, ad, "time vs plain TCP")
	tp := reporttest.Column(t, ad, "throughput (stream)")
	if !strings.HasPrefix(ad.Rows[0][0], "plain TCP") || reporttest.Number(t, ad.Rows[0][vsPlain]) != 1 {
		t.Errorf("first row must be plain TCP at 1.00x of itself: %v", ad.Rows[0])
	}
	last := ad.Rows[len(ad.Rows)-1]
	if last[0] != "adaptive controller" {
		t.Errorf("last row %q, want the adaptive controller", last[0])
	}
	for _, row := range ad.Rows {
		if v := reporttest.Number(t, row[tp]); !(v > 0) {
			t.Errorf("%s: throughput %v", row[0], v)
		}
	}
}
