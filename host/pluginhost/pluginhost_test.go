package pluginhost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/catalog"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/plugin"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv("DWCP_TEST_ROLE") == "host" {
		runHostRole()
		return
	}
	goleak.VerifyTestMain(m,
		// go-plugin's stdio copiers and gRPC's resolver end asynchronously
		// after Kill; they are owned by go-plugin, not by us.
		goleak.IgnoreTopFunction("github.com/hashicorp/go-plugin.(*Client).logStderr"),
	)
}

var (
	buildOnce sync.Once
	buildErr  error
	buildDir  string
)

// buildTestPlugins compiles the test codec twice: speaking protocol 1, and
// speaking only protocol 99.
func buildTestPlugins(t *testing.T) (current, future string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "dwcp-pluginhost-")
		if buildErr != nil {
			return
		}
		for name, ldflags := range map[string]string{
			"testcodec":        "",
			"testcodec-future": "-X main.protocols=99",
		} {
			cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", filepath.Join(buildDir, name), "./testdata/testcodec")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", name, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "testcodec"), filepath.Join(buildDir, "testcodec-future")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// pluginDir makes a pinned plugin directory holding the named binaries.
func pluginDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		copyFile(t, src, filepath.Join(dir, name))
	}
	if _, err := catalog.Pin(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func openHost(t *testing.T, dir string, opts Options) *Host {
	t.Helper()
	opts.Dir = dir
	h, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func TestLoadCallAndFingerprint(t *testing.T) {
	current, _ := buildTestPlugins(t)
	for _, shm := range []bool{true, false} {
		t.Run(fmt.Sprintf("shm=%v", shm), func(t *testing.T) {
			h := openHost(t, pluginDir(t, map[string]string{"testcodec": current}), Options{DisableSharedMemory: !shm})
			p, ok := h.Get("testcodec")
			if !ok {
				t.Fatalf("plugin not loaded; skipped: %v", h.Skipped())
			}
			fp, err := p.Fingerprint(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			wantPlane := map[bool]string{true: "shm", false: "grpc"}[shm]
			if fp.DataPlane != wantPlane || fp.Codec == nil || fp.Codec.Algorithm != "identity-test" || fp.Health.Status != sdk.Healthy {
				t.Fatalf("fingerprint %+v, want %s data plane, identity-test codec, healthy", fp, wantPlane)
			}
			c, err := p.Codec()
			if err != nil {
				t.Fatal(err)
			}
			for _, size := range []int{0, 1, 4096, 1 << 20, 9 << 20} {
				in := bytes.Repeat([]byte{byte(size)}, size)
				prefix := []byte("keep")
				out, err := c.Encode(append([]byte(nil), prefix...), in, 0)
				if err != nil {
					t.Fatalf("encode %d bytes: %v", size, err)
				}
				if !bytes.Equal(out[:4], prefix) || !bytes.Equal(out[4:], in) {
					t.Fatalf("encode %d bytes: output differs", size)
				}
			}
			// Typed errors survive the boundary on both data paths.
			if _, err := c.Encode(nil, []byte("corrupt please"), 0); !errors.Is(err, sdk.ErrCorruptInput) {
				t.Fatalf("corrupt: %v, want ErrCorruptInput", err)
			}
			if _, err := c.Encode(nil, []byte("x"), 5); !errors.Is(err, sdk.ErrInvalidArgument) {
				t.Fatalf("level 5: %v, want ErrInvalidArgument", err)
			}
			if _, err := c.Decode(nil, make([]byte, 100), 10); !errors.Is(err, sdk.ErrTooLarge) {
				t.Fatalf("decode over limit: %v, want ErrTooLarge", err)
			}
		})
	}
}

func TestCrashMidCallIsReportedWithStderrAndRestarted(t *testing.T) {
	current, _ := buildTestPlugins(t)
	for _, how := range []string{"panic", "exit", "kill"} {
		t.Run(how, func(t *testing.T) {
			hanging := &lineSignal{want: "testcodec: hanging in Encode", seen: make(chan struct{})}
			h := openHost(t, pluginDir(t, map[string]string{"testcodec": current}), Options{Stderr: hanging})
			p, _ := h.Get("testcodec")
			c, err := p.Codec()
			if err != nil {
				t.Fatal(err)
			}
			pid := p.Pid()
			if how == "kill" {
				// kill -9 while a call is in flight.
				done := make(chan error, 1)
				go func() {
					_, err := c.Encode(nil, []byte("hang forever"), 0)
					done <- err
				}()
				select {
				case <-hanging.seen:
				case <-time.After(30 * time.Second):
					t.Fatal("the call never reached the plugin")
				}
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				err = <-done
			} else {
				_, err = c.Encode(nil, []byte(how+" now"), 0)
			}
			var crash *plugin.CrashError
			if !errors.Is(err, sdk.ErrPluginCrashed) || !errors.As(err, &crash) {
				t.Fatalf("error %v (%T), want a CrashError", err, err)
			}
			t.Logf("%s: %v", how, err)
			if how == "panic" && !strings.Contains(err.Error(), "testcodec: asked to panic") {
				t.Fatalf("crash error does not carry the panic message:\n%v", err)
			}
			// The next call runs on a restarted process.
			out, err := c.Encode(nil, []byte("hello"), 0)
			if err != nil || string(out) != "hello" {
				t.Fatalf("after restart: %q, %v", out, err)
			}
			if p.Restarts() != 1 || p.Pid() == pid || p.Pid() == 0 {
				t.Fatalf("restarts=%d pid %d -> %d", p.Restarts(), pid, p.Pid())
			}
		})
	}
}

func TestRestartsAreBounded(t *testing.T) {
	current, _ := buildTestPlugins(t)
	h := openHost(t, pluginDir(t, map[string]string{"testcodec": current}), Options{MaxRestarts: 2})
	p, _ := h.Get("testcodec")
	c, _ := p.Codec()
	var err error
	for i := 0; i < 4; i++ {
		_, err = c.Encode(nil, []byte("exit"), 0)
	}
	if !errors.Is(err, ErrGaveUp) {
		t.Fatalf("after repeated crashes: %v, want ErrGaveUp", err)
	}
	// Giving up sticks: later calls do not launch the plugin again.
	restarts := p.Restarts()
	for i := 0; i < 3; i++ {
		if _, err := c.Encode(nil, []byte("hello"), 0); !errors.Is(err, ErrGaveUp) {
			t.Fatalf("call %d after giving up: %v, want ErrGaveUp", i, err)
		}
	}
	if p.Pid() != 0 || p.Restarts() != restarts {
		t.Fatalf("after giving up: pid %d, restarts %d -> %d", p.Pid(), restarts, p.Restarts())
	}
}

func TestTamperedAndIncompatiblePluginsAreSkipped(t *testing.T) {
	current, future := buildTestPlugins(t)
	dir := pluginDir(t, map[string]string{"good": current, "future": future, "tampered": current})
	f, err := os.OpenFile(filepath.Join(dir, "tampered"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("appended after pinning"))
	f.Close()
	h := openHost(t, dir, Options{})
	if _, ok := h.Get("good"); !ok {
		t.Fatal("good plugin not loaded")
	}
	reasons := map[string]error{}
	for _, s := range h.Skipped() {
		reasons[s.Name] = s.Reason
	}
	if !errors.Is(reasons["tampered"], catalog.ErrTampered) {
		t.Errorf("tampered: %v", reasons["tampered"])
	}
	if !errors.Is(reasons["future"], plugin.ErrIncompatible) {
		t.Errorf("future: %v", reasons["future"])
	}
}

func TestLaunchRefusesBinaryThatDiffersFromPin(t *testing.T) {
	current, _ := buildTestPlugins(t)
	_, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: current, SHA256: make([]byte, 32)})
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "checksum") {
		t.Fatalf("launch with wrong pin: %v, want a checksum error", err)
	}
}

// runHostRole is the child "host" of TestHostSIGKILLLeavesNoPlugin: it starts
// a plugin, prints its pid and waits to be killed.
func runHostRole() {
	inst, err := plugin.Launch(context.Background(), plugin.LaunchConfig{Path: os.Getenv("DWCP_TEST_PLUGIN")})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("pid", inst.Pid())
	select {}
}

func TestHostSIGKILLLeavesNoPlugin(t *testing.T) {
	current, _ := buildTestPlugins(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DWCP_TEST_ROLE=host", "DWCP_TEST_PLUGIN="+current)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("host child said nothing: %v", sc.Err())
	}
	fields := strings.Fields(sc.Text())
	if len(fields) != 2 || fields[0] != "pid" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("host child: %q", sc.Text())
	}
	pid, err := strconv.Atoi(fields[1])
	if err != nil || pid <= 0 {
		t.Fatalf("plugin pid %q", fields[1])
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("plugin %d not running before the host dies: %v", pid, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if !waitGone(pid, 5*time.Second) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("plugin %d outlived its SIGKILLed host", pid)
	}
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err == nil && strings.Contains(string(data), ") Z ") {
			return true // a zombie has exited; only its parent can reap it
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// TestHostLoadsThirdPartyExample builds examples/flatecodec, a plugin in its
// own module that imports only the SDK, and loads it like any plugin.
func TestHostLoadsThirdPartyExample(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "flatecodec")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("..", "..", "examples", "flatecodec")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the example: %v\n%s", err, out)
	}
	h := openHost(t, pluginDir(t, map[string]string{"flate": bin}), Options{})
	p, ok := h.Get("flate")
	if !ok {
		t.Fatalf("example not loaded (skipped: %v)", h.Skipped())
	}
	c, err := p.Codec()
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Description(); d.Kind != sdk.KindCodec || c.Capabilities().Algorithm != "deflate" {
		t.Fatalf("example describes itself as %+v, algorithm %q", d, c.Capabilities().Algorithm)
	}
	in := bytes.Repeat([]byte("third-party plugins load like ours "), 3000)
	enc, err := c.Encode(nil, in, c.Capabilities().Levels.Default)
	if err != nil || len(enc) >= len(in) {
		t.Fatalf("encode: %d bytes, %v", len(enc), err)
	}
	dec, err := c.Decode(nil, enc, len(in))
	if err != nil || !bytes.Equal(dec, in) {
		t.Fatalf("decode: %v", err)
	}
	if _, err := c.Decode(nil, enc[:len(enc)/2], len(in)); !errors.Is(err, sdk.ErrCorruptInput) {
		t.Fatalf("truncated input: %v, want ErrCorruptInput", err)
	}
}

// lineSignal closes seen when a plugin's stderr carries the line want.
type lineSignal struct {
	mu   sync.Mutex
	want string
	buf  []byte
	seen chan struct{}
	done bool
}

func (l *lineSignal) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.buf = append(l.buf, p...)
		if bytes.Contains(l.buf, []byte(l.want)) {
			l.done = true
			close(l.seen)
		}
	}
	return len(p), nil
}
