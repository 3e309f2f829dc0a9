package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// dwcp version, dwcp plugins list (table and JSON) and dwcp plugins check
// (by path and by name, passing and failing), on real plugin binaries.
func TestPluginsCommands(t *testing.T) {
	bin, plugins := buildAll(t)

	if out := run(t, bin, "version"); !strings.Contains(out, "plugin protocols [1]") {
		t.Errorf("dwcp version does not name the plugin protocols:\n%s", out)
	}

	var rows []pluginRow
	if err := json.Unmarshal(stdout(t, bin, "plugins", "list", "--dir", plugins, "--json"), &rows); err != nil {
		t.Fatalf("plugins list --json: %v", err)
	}
	kinds := map[string]string{"zstd": "codec", "s2": "codec", "lz4": "codec", "passthrough": "codec", "qemu": "hypervisor"}
	seen := map[string]bool{}
	for _, r := range rows {
		want, ok := kinds[r.Name]
		if !ok {
			t.Errorf("plugins list shows %q, which the test did not build", r.Name)
			continue
		}
		seen[r.Name] = true
		if r.Kind != want || r.Protocol != 1 || r.Checksum != "verified" || r.Health != "healthy" || len(r.Capabilities) == 0 || r.Version == "" {
			t.Errorf("plugins list row %+v: want kind %s, protocol 1, verified, healthy, a version and capabilities", r, want)
		}
		if want == "codec" && r.DataPlane != "shm" {
			t.Errorf("codec %s runs on data plane %q, want shm", r.Name, r.DataPlane)
		}
	}
	if len(seen) != len(kinds) {
		t.Errorf("plugins list showed %v, want all of %v", seen, kinds)
	}
	table := run(t, bin, "plugins", "list", "--dir", plugins)
	if lines := strings.Split(strings.TrimSpace(table), "\n"); !strings.HasPrefix(lines[0], "NAME") || len(lines) < len(kinds)+1 {
		t.Errorf("plugins list table: want a header and a line per plugin:\n%s", table)
	}

	// A tampered copy is refused by list and by check-by-name; the rest
	// of the directory still runs.
	tampered := t.TempDir()
	for _, name := range []string{"catalog.json", "dwcp-plugin-passthrough", "dwcp-plugin-lz4"} {
		copyFile(t, filepath.Join(plugins, name), filepath.Join(tampered, name))
	}
	f, err := os.OpenFile(filepath.Join(tampered, "dwcp-plugin-lz4"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{0})
	f.Close()
	rows = nil
	if err := json.Unmarshal(stdout(t, bin, "plugins", "list", "--dir", tampered, "--json"), &rows); err != nil {
		t.Fatalf("plugins list --json: %v", err)
	}
	states := map[string]string{}
	for _, r := range rows {
		states[r.Name] = r.Checksum
		if r.Name == "lz4" && !strings.Contains(r.Error, "does not match its pinned SHA-256") {
			t.Errorf("tampered lz4's row says %q, want it to name the pin", r.Error)
		}
	}
	if states["lz4"] != "refused" || states["passthrough"] != "verified" {
		t.Errorf("checksum states %v: want lz4 refused, passthrough verified", states)
	}
	checkFails(t, bin, 1, "does not match its pinned SHA-256", "plugins", "check", "lz4", "--dir", tampered)

	// Passing, by name and by path.
	for _, target := range []string{"passthrough", filepath.Join(plugins, "dwcp-plugin-passthrough")} {
		if out := run(t, bin, "plugins", "check", target, "--dir", plugins); !strings.Contains(out, "verdict: PASS") {
			t.Errorf("plugins check %s: no passing verdict:\n%s", target, out)
		}
	}
	// Names it does not know, and paths that are not there, say what is.
	// (--plugin-dir, as in every other command, means --dir here.)
	checkFails(t, bin, 1, "catalog has: ", "plugins", "check", "lz5", "--plugin-dir", plugins)
	checkFails(t, bin, 1, "no plugin binary at", "plugins", "check", filepath.Join(plugins, "lz4"), "--dir", plugins)

	// A plugin that breaks the contract gets a failing verdict and exit 1.
	crash := filepath.Join(t.TempDir(), "crashcodec")
	build := exec.Command("go", "build", "-o", crash, "./sdk/conformance/testdata/crashcodec")
	build.Dir = filepath.Join("..", "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build crashcodec: %v\n%s", err, out)
	}
	checkFails(t, bin, 1, "verdict: FAIL", "plugins", "check", crash)
}

// stdout runs dwcp with args and returns what it printed on stdout alone
// (warnings go to stderr).
func stdout(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		t.Fatalf("dwcp %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// checkFails runs dwcp with args and wants it to exit with code and say want.
func checkFails(t *testing.T, bin string, code int, want string, args ...string) {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != code || !strings.Contains(string(out), want) {
		t.Errorf("dwcp %s: err %v, want exit %d saying %q:\n%s", strings.Join(args, " "), err, code, want, out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
