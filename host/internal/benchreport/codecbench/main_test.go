package codecbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/dwcp/dwcp/host/catalog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if plugins.dir != "" {
			os.RemoveAll(plugins.dir)
		}
		os.Exit(code)
	}))
}

var plugins struct {
	once sync.Once
	dir  string
	err  error
}

// pluginDir builds the codec plugins from this tree into a temporary
// directory and pins them, once per test binary.
func pluginDir(t testing.TB) string {
	t.Helper()
	plugins.once.Do(func() {
		dir, err := os.MkdirTemp("", "codecbench-plugins-")
		if err != nil {
			plugins.err = err
			return
		}
		root := filepath.Join("..", "..", "..", "..")
		for _, p := range []string{"zstd", "s2", "lz4", "passthrough"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "dwcp-plugin-"+p), "./plugins/"+p)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				plugins.err = err
				t.Logf("build plugin %s:\n%s", p, out)
				return
			}
		}
		if _, err := catalog.Pin(dir); err != nil {
			plugins.err = err
			return
		}
		plugins.dir = dir
	})
	if plugins.err != nil {
		t.Fatalf("build plugins: %v", plugins.err)
	}
	return plugins.dir
}
