package testguest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// StreamNames are the captures RequireStreams provides.
var StreamNames = []string{"single.bin", "later.bin", "live.bin"}

var streamsOnce struct {
	sync.Mutex
	dir string
}

// RequireStreams returns a directory holding real QEMU 7.2 migration
// streams of the test guest (single.bin, later.bin, live.bin). It uses
// $DWCP_STREAMS (default /tmp/dwcp-streams) and captures them there with
// testdata/guest/capture-streams.sh when they are missing or stale (the
// script's own cache check makes a second call cheap). Like Require, it
// skips when QEMU is missing unless DWCP_REQUIRE_QEMU_TESTS=1.
func RequireStreams(t testing.TB) string {
	t.Helper()
	streamsOnce.Lock()
	defer streamsOnce.Unlock()
	if streamsOnce.dir != "" {
		return streamsOnce.dir
	}
	Require(t) // skips or fails when QEMU or the guest cannot run
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	dir, err := Streams(ctx)
	if err != nil {
		t.Fatal(err)
	}
	streamsOnce.dir = dir
	return dir
}

// Streams makes sure the real QEMU streams of the test guest exist in
// $DWCP_STREAMS (default /tmp/dwcp-streams), capturing them with
// testdata/guest/capture-streams.sh when they are missing or stale, and
// returns the directory. It needs QEMU and the guest (see Build).
func Streams(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir := os.Getenv("DWCP_STREAMS")
	if dir == "" {
		dir = "/tmp/dwcp-streams"
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "testdata/guest/capture-streams.sh"), dir)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("capture streams into %s: %w\n%s", dir, err, out)
	}
	for _, n := range StreamNames {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.Size() == 0 {
			return "", fmt.Errorf("capture streams: %s missing after capture: %v\n%s", n, err, out)
		}
	}
	return dir, nil
}

// StreamPath is a convenience for filepath.Join(RequireStreams(t), name).
func StreamPath(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(RequireStreams(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatal(fmt.Errorf("stream %s: %w", name, err))
	}
	return p
}
