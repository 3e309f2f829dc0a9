package modebench

import (
	"strings"
	"testing"

	"github.com/dwcp/dwcp/host/internal/benchreport"
	"github.com/dwcp/dwcp/host/wanlab"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestUnavailableIsComplete: without the lab, the part still yields every
// table, each measured cell saying why, and the charts' notes.
func TestUnavailableIsComplete(t *testing.T) {
	out := t.TempDir()
	s := &benchreport.Section{Title: "Hybrid mode"}
	unavailable(s, "WAN lab unavailable here: not root")
	r := &benchreport.Report{Title: "t", Machine: benchreport.DescribeMachine(t.Context()), Sections: []*benchreport.Section{s}}
	if err := benchreport.Write(out, r); err != nil {
		t.Fatal(err)
	}
	specs := []benchreport.SectionSpec{{Key: "hybrid", Title: "Hybrid mode", Tables: Hybrid.Tables, Figures: Hybrid.Figures}}
	rep, err := benchreport.Check(out, specs)
	if err != nil {
		t.Fatal(err)
	}
	det, _ := rep.Table(TitleDetection)
	if len(det.Rows) != len(wanlab.Profiles()) {
		t.Fatalf("%d detection rows", len(det.Rows))
	}
	for _, row := range det.Rows {
		if !strings.Contains(row[len(row)-1], "not root") {
			t.Errorf("row %v does not say why", row)
		}
	}
	variable := det.Rows[len(det.Rows)-2]
	if variable[0] != "variable" || variable[2] != "hybrid / internet (by step)" {
		t.Errorf("variable profile row %v: expected mode should be derived per step", variable)
	}
}
