package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
	"github.com/dwcp/dwcp/sdk/plugin"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// buildPlugin builds this command into a temporary directory.
func buildPlugin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and launches the plugin binary")
	}
	bin := filepath.Join(t.TempDir(), "simd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// The built plugin passes the conformance suite over both data paths, with
// the detected fast paths and with the forced pure-Go fallback.
func TestPluginBinary(t *testing.T) {
	bin := buildPlugin(t)
	opts := conformance.AccelOptions{CompressLevels: []int64{1, 2, 3}, Goroutines: 4}
	t.Run("detected", func(t *testing.T) {
		d, err := plugin.DescribeBinary(t.Context(), bin, nil)
		if err != nil {
			t.Fatal(err)
		}
		if d.Name != "simd" || !strings.Contains(d.Summary, "zero-scan=") {
			t.Fatalf("description %+v", d)
		}
		conformance.TestAcceleratorBinary(t, bin, opts)
	})
	t.Run("generic", func(t *testing.T) {
		t.Setenv("DWCP_SIMD_GENERIC", "1")
		d, err := plugin.DescribeBinary(t.Context(), bin, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(d.Summary, "zero-scan=word64-go") || !strings.Contains(d.Summary, "xor=word64-go") {
			t.Fatalf("generic summary %q", d.Summary)
		}
		conformance.TestAcceleratorBinary(t, bin, opts)
	})
}
