package plugin

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestProfileEnv: with ProfileEnv set, startProfile writes a gzipped
// pprof profile named after the plugin and the process when stopped;
// without it, nothing is written.
func TestProfileEnv(t *testing.T) {
	if err := pprof.StartCPUProfile(io.Discard); err != nil {
		t.Skipf("a CPU profile is already running (go test -cpuprofile?): %v", err)
	}
	pprof.StopCPUProfile()
	dir := t.TempDir()

	t.Setenv(ProfileEnv, "")
	startProfile(hclog.NewNullLogger(), "quiet")()
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("profile written without %s: %v", ProfileEnv, entries)
	}

	t.Setenv(ProfileEnv, filepath.Join(dir, "prof"))
	stop := startProfile(hclog.NewNullLogger(), "codec")
	x := 0
	for i := range 1 << 20 {
		x += i * i
	}
	stop()
	path := filepath.Join(dir, fmt.Sprintf("prof.codec.%d.pprof", os.Getpid()))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("profile not written (%d): %v", x, err)
	}
	if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Fatalf("%s is not a gzipped pprof profile: % x", path, b[:min(len(b), 8)])
	}
}
