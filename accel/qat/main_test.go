package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/accel/qat/qataccel"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/plugin"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func buildPlugin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and launches the plugin binary")
	}
	bin := filepath.Join(t.TempDir(), "qat")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// fingerprint launches bin and returns what the host sees.
func fingerprint(t *testing.T, bin string) (sdk.Description, plugin.Fingerprint) {
	t.Helper()
	inst, err := plugin.Launch(t.Context(), plugin.LaunchConfig{Path: bin})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Close()
	fp, err := inst.Fingerprint(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return inst.Description(), fp
}

func TestPluginWithoutHardware(t *testing.T) {
	bin := buildPlugin(t)
	t.Setenv(qataccel.EnvEmulate, "")
	desc, fp := fingerprint(t, bin)
	if desc.Name != "qat" || fp.Accelerator == nil || len(fp.Accelerator.Ops) != 0 || fp.Accelerator.Emulated {
		t.Fatalf("description %+v, capabilities %+v", desc, fp.Accelerator)
	}
	// The host sees the probe's verdict, not a pretence of offload.
	if fp.Health.Status != sdk.Unhealthy || !strings.Contains(fp.Health.Detail, "no QAT library in this build") {
		t.Fatalf("health %+v", fp.Health)
	}
	conformance.TestAcceleratorBinary(t, bin, conformance.AccelOptions{Goroutines: 2})
}

func TestPluginEmulated(t *testing.T) {
	bin := buildPlugin(t)
	t.Setenv(qataccel.EnvEmulate, "1")
	desc, fp := fingerprint(t, bin)
	if desc.Name != "qat-emulated" || !strings.HasPrefix(desc.Summary, "EMULATED — no QAT hardware") {
		t.Fatalf("description %+v", desc)
	}
	c := fp.Accelerator
	if c == nil || !c.Emulated || c.CompressFormat != "deflate" || !c.Supports(accel.OpCompress) || !c.Supports(accel.OpDecompress) {
		t.Fatalf("capabilities %+v", c)
	}
	if fp.Health.Status != sdk.Degraded || !strings.HasPrefix(fp.Health.Detail, "EMULATED — no QAT hardware") {
		t.Fatalf("health %+v", fp.Health)
	}
	conformance.TestAcceleratorBinary(t, bin, conformance.AccelOptions{CompressLevels: []int64{1, 6, 9}, Goroutines: 4})
}
