package testguest

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseManifest(t *testing.T) {
	m, err := parseManifest(strings.NewReader("kernel_version=6.1.0\n\nkey=abc=d\n"))
	if err != nil || m["kernel_version"] != "6.1.0" || m["key"] != "abc=d" {
		t.Errorf("parseManifest = %v, %v", m, err)
	}
	for _, bad := range []string{"novalue\n", "=x\n"} {
		if _, err := parseManifest(strings.NewReader(bad)); err == nil {
			t.Errorf("parseManifest(%q) accepted", bad)
		}
	}
}

func TestKernelArgs(t *testing.T) {
	got := Config{DirtyKBps: 2048, SparsePerSec: -1, ExtraKArgs: "loglevel=3"}.KernelArgs()
	want := "console=ttyS0 panic=-1 quiet dwcp.dirty_kbps=2048 dwcp.sparse_per_s=0 loglevel=3"
	if got != want {
		t.Errorf("KernelArgs = %q, want %q", got, want)
	}
}

// TestExpectedChecksumSeq checks the host's regeneration of the guest's fallback
// region against the real seq and head tools.
func TestExpectedChecksumSeq(t *testing.T) {
	if _, err := exec.LookPath("seq"); err != nil {
		t.Skip("seq not installed")
	}
	out, err := exec.Command("bash", "-c", "seq 1 99999999 | head -c 1048576 | md5sum").Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Fields(string(out))[0]
	got, err := Guest{}.ExpectedChecksum(1)
	if err != nil || got != want {
		t.Errorf("ExpectedChecksum(1) without payload = %s, %v; seq|head|md5sum says %s", got, err, want)
	}
}

// requireBuildInputs skips (or, under DWCP_REQUIRE_QEMU_TESTS=1, fails) when the
// guest cannot be built on this machine.
func requireBuildInputs(t *testing.T) {
	t.Helper()
	for _, p := range []string{"/bin/busybox"} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv(RequireEnv) == "1" {
				t.Fatalf("%s missing", p)
			}
			t.Skipf("%s missing: apt-get install -y busybox-static", p)
		}
	}
	if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatal("no kernel in /boot")
		}
		t.Skip("no kernel in /boot: apt-get install -y linux-image-amd64")
	}
}

// TestBuildCached builds a guest with a small payload into a fresh directory, then
// checks what the initramfs and payload hold and that an unchanged rebuild is a
// no-op while a changed input rebuilds.
func TestBuildCached(t *testing.T) {
	requireBuildInputs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	t.Setenv("DWCP_GUEST_PAYLOAD_MB", "4")
	g, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	// 4 MiB of file data plus tar headers, padded to whole MiBs.
	if g.Payload == "" || g.PayloadBytes < 4<<20 || g.PayloadBytes > 5<<20 || g.PayloadBytes%(1<<20) != 0 {
		t.Errorf("payload %q of %d bytes, want a 4-5 MiB image in whole MiBs", g.Payload, g.PayloadBytes)
	}

	names, initData := listInitramfs(t, g.Initrd)
	for _, want := range []string{"init", "bin/busybox", "bin/sh", "lib/modules/order", "lib/modules/virtio_blk.ko", "lib/modules/virtio_pci.ko"} {
		if !slices.Contains(names, want) {
			t.Errorf("initramfs lacks %s", want)
		}
	}
	initSrc, err := os.ReadFile(filepath.Join(mustRoot(t), "testdata/guest/init.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(initData, initSrc) {
		t.Error("initramfs /init differs from testdata/guest/init.sh")
	}

	out, err := exec.Command("tar", "-tf", g.Payload).Output()
	if err != nil {
		t.Fatalf("payload is not a tar: %v", err)
	}
	files := strings.Fields(string(out))
	var elf, text int
	for _, f := range files {
		switch {
		case strings.HasSuffix(f, ".py"), strings.HasSuffix(f, ".h"), strings.HasSuffix(f, ".pm"), strings.HasSuffix(f, ".pl"):
			text++
		default:
			elf++
		}
	}
	if elf == 0 || text == 0 {
		t.Errorf("payload has %d binary and %d text files, want both kinds: %v", elf, text, files[:min(len(files), 10)])
	}

	st, err := os.Stat(g.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := os.Stat(g.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if again.Key != g.Key || !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("unchanged inputs rebuilt the guest (key %s -> %s)", g.Key, again.Key)
	}

	t.Setenv("DWCP_GUEST_PAYLOAD_MB", "0")
	none, err := Build(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if none.Key == g.Key || none.Payload != "" {
		t.Errorf("payload size change: key %s (was %s), payload %q; want a rebuild without payload", none.Key, g.Key, none.Payload)
	}
}

func mustRoot(t *testing.T) string {
	t.Helper()
	r, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// listInitramfs returns the member names of a gzip'd newc archive (via cpio -t)
// and the decompressed bytes.
func listInitramfs(t *testing.T, path string) ([]string, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("initramfs is not gzip: %v", err)
	}
	var raw bytes.Buffer
	if _, err := raw.ReadFrom(zr); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(raw.Bytes())
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	var names []string
	for _, n := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		names = append(names, strings.TrimPrefix(n, "./"))
	}
	return names, raw.Bytes()
}
