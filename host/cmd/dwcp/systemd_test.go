package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// examples/systemd/dwcp-serve.service is what docs/operations.md tells
// operators to install: its ExecStart must be a dwcp serve command line
// this build accepts, it must keep the VMs that migrated here alive across
// a daemon restart (KillMode=process, RuntimeDirectoryPreserve=yes), and
// systemd must accept the unit (systemd-analyze verify, where installed).
func TestSystemdUnitExample(t *testing.T) {
	path := filepath.Join("..", "..", "..", "examples", "systemd", "dwcp-serve.service")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			settings[k] = v
		}
	}
	for k, want := range map[string]string{"KillMode": "process", "RuntimeDirectory": "dwcp", "RuntimeDirectoryPreserve": "yes", "KillSignal": "SIGTERM"} {
		if settings[k] != want {
			t.Errorf("%s=%q, want %q", k, settings[k], want)
		}
	}
	args := strings.Fields(settings["ExecStart"])
	if len(args) < 2 || filepath.Base(args[0]) != "dwcp" || args[1] != "serve" {
		t.Fatalf("ExecStart=%q: want dwcp serve ...", settings["ExecStart"])
	}
	// The flags as this build's serve parses them (%H is systemd's host
	// name specifier).
	root := newRootCommand()
	serve, rest, err := root.Find(args[1:])
	if err != nil || serve.Name() != "serve" {
		t.Fatalf("find serve: %v", err)
	}
	if err := serve.ParseFlags(rest); err != nil {
		t.Errorf("dwcp serve does not take the unit's flags %q: %v", rest, err)
	}
	if got := serve.Flags().Lookup("name").Value.String(); got != "%H" {
		t.Errorf("--name %q, want %%H", got)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze here: the unit's systemd syntax is not checked")
	}
	// verify wants ExecStart's program to exist: point it at a real dwcp.
	bin, _ := buildAll(t)
	unit := filepath.Join(t.TempDir(), "dwcp-serve.service")
	text := strings.Replace(string(raw), "ExecStart="+args[0], "ExecStart="+bin, 1)
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", unit).CombinedOutput()
	if err != nil || strings.Contains(string(out), filepath.Base(unit)) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
