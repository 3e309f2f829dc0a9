package testguest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Guest is a built guest: the files QEMU boots. Build fills it in.
type Guest struct {
	Dir    string // the build directory
	Kernel string // vmlinuz
	Initrd string // initramfs.gz
	// Payload is the raw tar image attached as a read-only virtio disk, or "" when
	// the guest was built without one (DWCP_GUEST_PAYLOAD_MB=0).
	Payload       string
	PayloadBytes  int64  // size of Payload (whole MiBs)
	KernelVersion string // e.g. 6.1.0-56-amd64
	Key           string // cache key of the build's inputs
}

// buildScript is the guest recipe, relative to the repository root.
const buildScript = "testdata/guest/build-guest.sh"

// RepoRoot finds the repository root: $DWCP_ROOT when set, else the nearest parent
// of the working directory holding testdata/guest/build-guest.sh (tests run in their
// package directory, tools from the root).
func RepoRoot() (string, error) {
	if r := os.Getenv("DWCP_ROOT"); r != "" {
		if _, err := os.Stat(filepath.Join(r, buildScript)); err != nil {
			return "", fmt.Errorf("repo root from DWCP_ROOT: %w", err)
		}
		return r, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, buildScript)); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("repo root: no %s above the working directory (set DWCP_ROOT)", buildScript)
		}
		dir = parent
	}
}

// CacheDir is where built guests are kept by default: $DWCP_CACHE/guest, else the
// user cache directory's dwcp/guest (~/.cache/dwcp/guest on Linux). It is shared by
// every test package, so the guest is built once per machine and inputs.
func CacheDir() (string, error) {
	if c := os.Getenv("DWCP_CACHE"); c != "" {
		return filepath.Join(c, "guest"), nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("guest cache dir: %w", err)
	}
	return filepath.Join(base, "dwcp", "guest"), nil
}

// Build runs testdata/guest/build-guest.sh into dir (CacheDir() when dir is "").
// The script rebuilds only when its inputs changed, so calling Build from every
// test is cheap. The script's output is part of the error when it fails.
func Build(ctx context.Context, dir string) (Guest, error) {
	if dir == "" {
		d, err := CacheDir()
		if err != nil {
			return Guest{}, err
		}
		dir = d
	}
	root, err := RepoRoot()
	if err != nil {
		return Guest{}, fmt.Errorf("build guest: %w", err)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, buildScript), dir)
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return Guest{}, fmt.Errorf("build guest into %s: %w\n%s", dir, err, tail(out.Bytes(), 4096))
	}
	return LoadGuest(dir)
}

// LoadGuest describes an already built guest directory.
func LoadGuest(dir string) (Guest, error) {
	f, err := os.Open(filepath.Join(dir, "manifest"))
	if err != nil {
		return Guest{}, fmt.Errorf("load guest: %w", err)
	}
	defer f.Close()
	m, err := parseManifest(f)
	if err != nil {
		return Guest{}, fmt.Errorf("load guest %s: %w", dir, err)
	}
	g := Guest{
		Dir:           dir,
		Kernel:        filepath.Join(dir, "vmlinuz"),
		Initrd:        filepath.Join(dir, "initramfs.gz"),
		KernelVersion: m["kernel_version"],
		Key:           m["key"],
	}
	for _, p := range []string{g.Kernel, g.Initrd} {
		if _, err := os.Stat(p); err != nil {
			return Guest{}, fmt.Errorf("load guest: %w", err)
		}
	}
	if g.KernelVersion == "" || g.Key == "" {
		return Guest{}, fmt.Errorf("load guest %s: manifest lacks kernel_version or key", dir)
	}
	payload := filepath.Join(dir, "payload.img")
	switch st, err := os.Stat(payload); {
	case err == nil:
		g.Payload, g.PayloadBytes = payload, st.Size()
	case !errors.Is(err, os.ErrNotExist):
		return Guest{}, fmt.Errorf("load guest: %w", err)
	}
	return g, nil
}

// parseManifest reads key=value lines; anything else is an error, because a
// half-written manifest must not pass for a build.
func parseManifest(r io.Reader) (map[string]string, error) {
	m := make(map[string]string)
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("manifest line %d: want key=value, got %.80q", n, line)
		}
		m[k] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	return m, nil
}

// ExpectedChecksum computes on the host the MD5 that the guest prints as
// "DWCP sum=": the first sumMiB MiB of the payload disk when the disk is at least
// that large, else the first sumMiB MiB of `seq 1 99999999` (see init.sh).
func (g Guest) ExpectedChecksum(sumMiB int) (string, error) {
	if sumMiB <= 0 {
		sumMiB = defaultSumMiB
	}
	n := int64(sumMiB) << 20
	h := md5.New()
	if g.Payload != "" && g.PayloadBytes >= n {
		f, err := os.Open(g.Payload)
		if err != nil {
			return "", fmt.Errorf("expected checksum: %w", err)
		}
		defer f.Close()
		if _, err := io.CopyN(h, f, n); err != nil {
			return "", fmt.Errorf("expected checksum of %s: %w", g.Payload, err)
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	w := bufio.NewWriter(&limitWriter{w: h, n: n})
	buf := make([]byte, 0, 16)
	for i := 1; i <= 99999999; i++ {
		buf = strconv.AppendInt(buf[:0], int64(i), 10)
		buf = append(buf, '\n')
		if _, err := w.Write(buf); err != nil {
			break // limit reached
		}
	}
	_ = w.Flush()
	return hex.EncodeToString(h.Sum(nil)), nil
}

var errLimit = errors.New("limit reached")

// limitWriter passes through the first n bytes and then fails.
type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, errLimit
	}
	short := int64(len(p)) > l.n
	if short {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	if err == nil && short {
		err = errLimit
	}
	return n, err
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
