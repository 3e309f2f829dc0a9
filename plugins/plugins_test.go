// Package plugins_test builds every codec plugin binary in this folder and
// runs the SDK conformance kit against it through the plugin boundary, on
// the shared-memory data path and on the gRPC fallback.
package plugins_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dwcp/dwcp/sdk/conformance"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	removeBuilt()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// codecPlugins are the plugin main packages in this folder.
var codecPlugins = []string{"zstd", "s2", "lz4", "passthrough"}

// buildPlugins compiles ./name for each name into dir in one go build (the
// packages share most of their compilation) and returns the binaries'
// paths by name.
func buildPlugins(t testing.TB, dir string, names ...string) map[string]string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build the plugin binaries: %v", err)
	}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	bins := map[string]string{}
	for _, n := range names {
		args = append(args, "./"+n)
		bins[n] = filepath.Join(dir, n)
	}
	cmd := exec.Command(goTool, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go %v: %v", args, err)
	}
	return bins
}

// binaryOptions trim the suite for the plugin boundary, where it runs twice
// per plugin: an 8 MiB huge block and bomb are still far over a
// shared-memory slot (the fallback they must exercise), and a sample of
// levels suffices because the in-process tests cover every level.
var binaryOptions = conformance.CodecOptions{HugeSize: 8 << 20, MaxLevels: 4}

func TestPluginBinaries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds four binaries and drives each through both data paths")
	}
	bins := buildPlugins(t, t.TempDir(), codecPlugins...)
	for _, name := range codecPlugins {
		t.Run(name, func(t *testing.T) {
			conformance.TestCodecBinary(t, bins[name], binaryOptions)
		})
	}
}
