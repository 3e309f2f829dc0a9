// Package buildtest builds the real product for tests: the dwcp binary and
// plugin binaries from this repository, pinned in a fresh plugin
// directory, the way `make build` lays them out. It owns nothing else.
package buildtest

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dwcp/dwcp/host/internal/testguest"
)

// Plugin folders of the repository.
const (
	Zstd        = "plugins/zstd"
	S2          = "plugins/s2"
	LZ4         = "plugins/lz4"
	Passthrough = "plugins/passthrough"
	QEMU        = "hypervisors/qemu"
)

// Codecs are the codec plugins DWCP ships.
var Codecs = []string{Zstd, S2, LZ4, Passthrough}

// Product builds dwcp and the plugins in the given repository folders
// (e.g. Zstd, QEMU) into a temporary directory of t, pins the plugins with
// `dwcp plugins pin`, and returns the binary and the plugin directory.
func Product(t testing.TB, plugins ...string) (dwcp, pluginDir string) {
	t.Helper()
	root, err := testguest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pluginDir = filepath.Join(dir, "plugins")
	dwcp = filepath.Join(dir, "dwcp")
	builds := [][2]string{{dwcp, "./host/cmd/dwcp"}}
	for _, p := range plugins {
		builds = append(builds, [2]string{filepath.Join(pluginDir, "dwcp-plugin-"+filepath.Base(p)), "./" + p})
	}
	for _, b := range builds {
		cmd := exec.Command("go", "build", "-o", b[0], b[1])
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b[1], err, out)
		}
	}
	if out, err := exec.Command(dwcp, "plugins", "pin", "--dir", pluginDir).CombinedOutput(); err != nil {
		t.Fatalf("pin: %v\n%s", err, out)
	}
	return dwcp, pluginDir
}
