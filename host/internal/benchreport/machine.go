package benchreport

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// Machine describes where the report was measured.
type Machine struct {
	CPUModel string
	Cores    int
	MemTotal string
	Kernel   string
	Go       string
	QEMU     string
	ZstdCLI  string
	LZ4CLI   string
	Hostname string
}

// DescribeMachine reads the machine's facts; anything it cannot find says
// "unknown (reason)".
func DescribeMachine(ctx context.Context) Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	m.MemTotal = procField("/proc/meminfo", "MemTotal")
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	} else {
		m.Kernel = "unknown (" + err.Error() + ")"
	}
	m.Hostname, _ = os.Hostname()
	m.QEMU = toolVersion(ctx, "qemu-system-x86_64", "--version")
	m.ZstdCLI = toolVersion(ctx, "zstd", "--version")
	m.LZ4CLI = toolVersion(ctx, "lz4", "--version")
	return m
}

func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return "unknown (no " + key + " in " + path + ")"
}

// toolVersion is the first line of `name args`, or why there is none.
func toolVersion(ctx context.Context, name string, args ...string) string {
	path, err := exec.LookPath(name)
	if err != nil {
		return "not installed"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := bytes.Cut(bytes.TrimSpace(out), []byte("\n"))
	return strings.TrimSpace(string(line))
}
