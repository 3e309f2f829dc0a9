package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/internal/benchreport/sections"
)

// TestBenchReportQuick runs `dwcp bench report --quick` end to end with the
// real binary and plugins, then reads the report back: every section and
// promised table present, every chart an SVG file, no empty cell without a
// reason, and no section failed. Without root or QEMU the lab rows say why;
// CI has both (DWCP_REQUIRE_* make their absence a failure elsewhere).
func TestBenchReportQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the quick benchmark report (minutes)")
	}
	bin, plugins := buildAll(t)
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "report", "--quick", "--out", out, "--plugin-dir", plugins)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		t.Fatalf("dwcp bench report --quick: %v\n%s", err, log.String())
	}
	t.Logf("progress:\n%s", log.String())
	p, err := benchreport.Check(out, sections.All())
	if err != nil {
		t.Fatalf("report incomplete: %v", err)
	}
	md, err := os.ReadFile(filepath.Join(out, benchreport.ReportFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(md), "did not finish") {
		t.Fatalf("a section failed:\n%s", md)
	}
	specs := sections.All()
	if len(p.Sections) != len(specs)+2 { // + Machine, Contents
		t.Errorf("sections %q, want the %d of the report plus Machine and Contents", p.Sections, len(specs))
	}
	var promised, charts int
	for _, s := range specs {
		promised += len(s.Tables)
		charts += len(s.Figures)
	}
	if len(p.Tables) < promised+1 {
		t.Errorf("%d tables, want at least %d", len(p.Tables), promised+1)
	}
	if len(p.Images) == 0 {
		t.Errorf("no chart was drawn (%d promised)", charts)
	}
	for _, img := range p.Images {
		if _, err := os.Stat(filepath.Join(out, img)); err != nil {
			t.Error(err)
		}
	}
	if out := run(t, bin, "bench", "check", out); !strings.Contains(out, "complete") {
		t.Errorf("bench check: %s", out)
	}
}

func TestBenchReportRejectsUnknownSection(t *testing.T) {
	bin, _ := buildAll(t)
	out, err := exec.Command(bin, "bench", "report", "--only", "nosuch", "--out", t.TempDir()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no such section") {
		t.Fatalf("unknown section accepted: %v\n%s", err, out)
	}
}
