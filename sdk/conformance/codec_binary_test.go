package conformance_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk/conformance"
)

// A plugin that dies on damaged input must be reported as failing, with
// its panic, and the run must end rather than hang.
func TestCrashingPluginBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a plugin binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("need the go tool: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "crashcodec")
	cmd := exec.Command(goTool, "build", "-o", bin, "./testdata/crashcodec")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := conformance.CheckCodecBinary(ctx, bin, conformance.CodecOptions{HugeSize: 1 << 20, Goroutines: 2})
	if r.OK() {
		t.Fatalf("a crashing plugin passed:\n%s", r)
	}
	for _, path := range []string{"shm", "grpc"} {
		// The first damaged input kills it: corrupt/empty reports the
		// crash, the checks after it are skipped, close fails.
		for name, want := range map[string]conformance.Status{"corrupt/empty": conformance.StatusFail, "corrupt/truncated": conformance.StatusSkip, "close": conformance.StatusFail} {
			res, ok := find(r, path+"/"+name)
			if !ok || res.Status != want || !strings.Contains(res.Message, "crash") {
				t.Errorf("%s/%s: %+v, want %s mentioning the crash", path, name, res, want)
			}
		}
		if res, ok := find(r, path+"/roundtrip/level=0"); !ok || res.Status != conformance.StatusPass {
			t.Errorf("%s: valid round trips before the crash should pass: %+v", path, res)
		}
	}
	if res, _ := find(r, "describe"); res.Status != conformance.StatusPass {
		t.Errorf("describe: %+v", res)
	}
	if s := r.String(); !strings.Contains(s, "crashcodec: damaged block") {
		t.Errorf("the plugin's panic message is not in the report:\n%s", s)
	}
}
