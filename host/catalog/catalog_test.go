package catalog

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func writeExec(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestPinLoadVerify(t *testing.T) {
	dir := t.TempDir()
	writeExec(t, filepath.Join(dir, "dwcp-plugin-zstd"), "#!/bin/sh\necho zstd\n")
	writeExec(t, filepath.Join(dir, "dwcp-plugin-s2"), "#!/bin/sh\necho s2\n")
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("not executable"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Pin(dir); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Plugins) != 2 || c.Plugins[0].Name != "s2" || c.Plugins[1].Name != "zstd" {
		t.Fatalf("pinned %+v, want s2 and zstd", c.Plugins)
	}
	ok, refused := c.Verify()
	if len(ok) != 2 || len(refused) != 0 {
		t.Fatalf("verify: ok=%v refused=%v", ok, refused)
	}
}

func TestVerifyRefusesTamperedUnknownAndEscapingFiles(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	writeExec(t, filepath.Join(dir, "good"), "good")
	writeExec(t, filepath.Join(dir, "tampered"), "original")
	if _, err := Pin(dir); err != nil {
		t.Fatal(err)
	}
	writeExec(t, filepath.Join(dir, "tampered"), "original plus a backdoor")
	writeExec(t, filepath.Join(dir, "stranger"), "never pinned")
	writeExec(t, filepath.Join(outside, "evil"), "outside")
	if err := os.Symlink(filepath.Join(outside, "evil"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("good", filepath.Join(dir, "alias")); err != nil {
		t.Fatal(err)
	}
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A catalog entry pointing through the escaping link is refused too.
	c.Plugins = append(c.Plugins, Entry{Name: "escape", File: "escape", SHA256: c.Plugins[0].SHA256})
	c.Plugins = append(c.Plugins, Entry{Name: "gone", File: "gone", SHA256: c.Plugins[0].SHA256})
	c.Plugins = append(c.Plugins, Entry{Name: "abs", File: filepath.Join(outside, "evil"), SHA256: c.Plugins[0].SHA256})
	ok, refused := c.Verify()
	if len(ok) != 1 || ok[0].Name != "good" {
		t.Fatalf("verified %+v, want only good", ok)
	}
	want := map[string]error{
		"tampered": ErrTampered,
		"stranger": ErrUnknown,
		"escape":   ErrEscapes,
		"gone":     ErrMissing,
		"abs":      ErrEscapes,
	}
	got := map[string]error{}
	for _, r := range refused {
		if _, dup := got[r.Name]; !dup {
			got[r.Name] = r.Err
		}
	}
	for name, sentinel := range want {
		if !errors.Is(got[name], sentinel) {
			t.Errorf("%s: refused with %v, want %v", name, got[name], sentinel)
		}
	}
	// The in-directory alias resolves to a pinned file: it is not refused.
	if err, found := got["alias"]; found {
		t.Errorf("alias refused: %v", err)
	}
	// VerifyEntry, one entry at a time, gives each entry's verdict too;
	// a name the catalog does not list is unknown.
	if v, err := c.VerifyEntry("good"); err != nil || v.Path != ok[0].Path {
		t.Errorf("VerifyEntry(good) = %+v, %v", v, err)
	}
	for name, sentinel := range want {
		if _, err := c.VerifyEntry(name); !errors.Is(err, sentinel) {
			t.Errorf("VerifyEntry(%s): %v, want %v", name, err, sentinel)
		}
	}
}

func TestLoadRejectsMalformedCatalogs(t *testing.T) {
	for name, body := range map[string]string{
		"not json":      "{",
		"wrong version": `{"version":2,"plugins":[]}`,
		"bad digest":    `{"version":1,"plugins":[{"name":"a","file":"a","sha256":"xyz"}]}`,
		"duplicate":     `{"version":1,"plugins":[{"name":"a","file":"a","sha256":"` + zeros64 + `"},{"name":"a","file":"b","sha256":"` + zeros64 + `"}]}`,
		"unknown field": `{"version":1,"plugins":[],"extra":1}`,
		"empty name":    `{"version":1,"plugins":[{"name":"","file":"a","sha256":"` + zeros64 + `"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := Load(dir); !errors.Is(err, ErrBadFormat) {
				t.Fatalf("Load: %v, want ErrBadFormat", err)
			}
		})
	}
}

const zeros64 = "0000000000000000000000000000000000000000000000000000000000000000"

func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"version":1,"plugins":[{"name":"a","file":"a","sha256":"` + zeros64 + `"}]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Load(dir)
		if err != nil {
			return
		}
		c.Verify()
	})
}
