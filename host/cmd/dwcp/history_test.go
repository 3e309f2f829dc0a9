package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/pagestore"
	"github.com/dwcp/dwcp/host/qemustream/streamtest"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "4GiB": 4 << 30, "4gib": 4 << 30, "512M": 512 << 20, "512MB": 512 << 20,
		" 1T ": 1 << 40, "3k": 3 << 10, "8388607T": 8388607 << 40,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5G", "G", "4XB", "8388608T", "9223372036854775808", "0x10", "+5"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
	for _, n := range []int64{0, 1, 4 << 30, 3<<20 + 1, 5 << 40} {
		if got, err := parseSize(formatSize(n)); err != nil || got != n {
			t.Errorf("formatSize(%d) = %q parses to %d, %v", n, formatSize(n), got, err)
		}
	}
}

// FuzzParseSize: no panic, no negative or wrapped result, and whatever is
// accepted formats back to the same count.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "4GiB", "512m", "1T", "-1", "99999999999999999999", "8388607T", "8388608t", "kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
		if back, err := parseSize(formatSize(n)); err != nil || back != n {
			t.Fatalf("parseSize(%q) = %d formats to %q, which parses to %d, %v", s, n, formatSize(n), back, err)
		}
	})
}

// qemuStreamFile writes a synthetic QEMU migration stream of an 8 MiB
// guest; streams with the same seed share their first pass.
func qemuStreamFile(t *testing.T, path string, seed uint64, dirtyPasses int) []byte {
	t.Helper()
	b := streamtest.Generate(streamtest.Config{Seed: seed, DirtyPasses: dirtyPasses, DirtyPages: 200, Devices: 2,
		Blocks: []streamtest.Block{{Name: "pc.ram", Length: 8 << 20}}})
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Two `dwcp send`s of QEMU streams of the same guest to `dwcp serve`, each
// host with its own state directory: the first records the session on
// both hosts (both processes exit in between), the second sends the pages
// the first one carried as references, and both arrive byte-exact.
func TestSendUsesPageHistoryAcrossProcesses(t *testing.T) {
	bin, plugins := buildAll(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	makeCerts(t, bin, certs)
	stateA, stateB := filepath.Join(dir, "stateA"), filepath.Join(dir, "stateB")
	send := func(name string, data []byte) sendSummary {
		t.Helper()
		outDir := filepath.Join(dir, "out")
		srv := startServeEnv(t, bin, plugins, certs, outDir, "DWCP_STATE="+stateB)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "send", filepath.Join(dir, name), "--to", srv.addr, "--peer-name", "hostb",
			"--certs", certs, "--name", "hosta", "--plugin-dir", plugins, "--json", "--mode", "internet", "--page-stage", "on")
		cmd.Env = append(os.Environ(), "DWCP_STATE="+stateA)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("send: %v\n%s\nserver: %s", err, stderr.String(), srv.out)
		}
		if err := <-srv.done; err != nil {
			t.Fatalf("serve exited with %v: %s", err, srv.out)
		}
		srv.done <- nil
		got, err := os.ReadFile(filepath.Join(outDir, name))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("received %d bytes (%v), not the %d sent", len(got), err, len(data))
		}
		if !strings.Contains(srv.out.String(), "history: session ") {
			t.Errorf("serve did not report the history: %s", srv.out)
		}
		var sum sendSummary
		if err := json.Unmarshal(out, &sum); err != nil {
			t.Fatalf("summary %q: %v", out, err)
		}
		return sum
	}
	first := send("first.bin", qemuStreamFile(t, filepath.Join(dir, "first.bin"), 11, 1))
	if !first.History.Recording || first.Pages.Known != 0 {
		t.Fatalf("first send: history %+v, %d known pages", first.History, first.Pages.Known)
	}
	for _, st := range []string{stateA, stateB} {
		s, err := pagestore.Open(filepath.Join(st, "pages"), pagestore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		peer := map[string]string{stateA: "hostb", stateB: "hosta"}[st]
		if h := s.Held(peer); len(h) != 1 || h[0].ID != pagestore.SessionID(first.History.Session) {
			t.Errorf("%s holds %+v with %s, want session %s", st, h, peer, first.History.Session)
		}
		s.Close()
	}
	second := send("second.bin", qemuStreamFile(t, filepath.Join(dir, "second.bin"), 11, 3))
	t.Logf("first: %d wire bytes, pages %+v\nsecond: %d wire bytes, pages %+v, history %+v",
		first.WireBytes, first.Pages, second.WireBytes, second.Pages, second.History)
	if second.History.Sessions != 1 || second.Pages.Known == 0 || second.WireBytes >= first.WireBytes/2 {
		t.Fatalf("second send: history %+v, %d known pages, %d wire bytes (first %d)", second.History, second.Pages.Known, second.WireBytes, first.WireBytes)
	}
}
