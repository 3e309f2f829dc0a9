//go:build linux

package modebench

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/modes"
	"github.com/dwcp/dwcp/host/wanlab"
)

// buildPlugins builds the codec plugins and pins them, as `make build`
// does for bin/plugins.
func buildPlugins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	plugins := filepath.Join(dir, "plugins")
	root := filepath.Join("..", "..", "..", "..")
	builds := [][2]string{{filepath.Join(dir, "dwcp"), "./host/cmd/dwcp"}}
	for _, p := range []string{"plugins/zstd", "plugins/s2", "plugins/lz4"} {
		builds = append(builds, [2]string{filepath.Join(plugins, "dwcp-plugin-"+filepath.Base(p)), "./" + p})
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-o", b[0], b[1])
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b[1], err, out)
		}
	}
	if out, err := exec.Command(filepath.Join(dir, "dwcp"), "plugins", "pin", "--dir", plugins).CombinedOutput(); err != nil {
		t.Fatalf("pin: %v\n%s", err, out)
	}
	return plugins
}

// logWriter sends the run's progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func cellNumber(t *testing.T, cell string) float64 {
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

func column(t *testing.T, tab benchreport.ParsedTable, name string) int {
	t.Helper()
	for i, c := range tab.Columns {
		if c == name {
			return i
		}
	}
	t.Fatalf("table %q has no column %q: %v", tab.Title, name, tab.Columns)
	return -1
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
	plugins := buildPlugins(t)
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
	acc := column(t, det, "accuracy")
	exp := column(t, det, "expected mode (settings vs thresholds)")
	for i, p := range profiles {
		row := det.Rows[i]
		if row[0] != p.Name {
			t.Errorf("row %d is %q, want profile %q", i, row[0], p.Name)
		}
		if a := cellNumber(t, row[acc]); a < 0 || a > 100 {
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
	vsPlain := column(t, ad, "time vs plain TCP")
	tp := column(t, ad, "throughput (stream)")
	if !strings.HasPrefix(ad.Rows[0][0], "plain TCP") || cellNumber(t, ad.Rows[0][vsPlain]) != 1 {
		t.Errorf("first row must be plain TCP at 1.00x of itself: %v", ad.Rows[0])
	}
	last := ad.Rows[len(ad.Rows)-1]
	if last[0] != "adaptive controller" {
		t.Errorf("last row %q, want the adaptive controller", last[0])
	}
	for _, row := range ad.Rows {
		if v := cellNumber(t, row[tp]); !(v > 0) {
			t.Errorf("%s: throughput %v", row[0], v)
		}
	}
}
