package testguest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RequireEnv names the variable that turns missing QEMU prerequisites from a
// skip into a failure (CI sets it to 1).
const RequireEnv = "DWCP_REQUIRE_QEMU_TESTS"

// Require returns the built guest for a test that boots it. When QEMU or the
// guest's inputs are missing, or the run is -short, the test is skipped with the
// reason, unless DWCP_REQUIRE_QEMU_TESTS=1, which makes a missing piece fatal.
// A build that fails with its inputs present always fails the test.
func Require(t testing.TB) Guest {
	t.Helper()
	required := os.Getenv(RequireEnv) == "1"
	missing := func(format string, args ...any) {
		t.Helper()
		if required {
			t.Fatalf(format+" ("+RequireEnv+"=1)", args...)
		}
		t.Skipf(format+" (set "+RequireEnv+"=1 to fail instead)", args...)
	}
	if testing.Short() && !required {
		t.Skip("boots a QEMU/TCG guest (about 15 s); skipped in -short mode")
	}
	if reason := Missing(); reason != "" {
		missing("%s", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := Build(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// Missing says what this machine lacks to build and boot the test guest
// (with the apt-get command that fixes it), or "" when nothing is missing.
func Missing() string {
	if _, err := exec.LookPath(QEMUBinary()); err != nil {
		return QEMUBinary() + " not found: apt-get install -y qemu-system-x86"
	}
	if os.Getenv("DWCP_GUEST_KERNEL") == "" {
		if k, _ := filepath.Glob("/boot/vmlinuz-*"); len(k) == 0 {
			return "no kernel in /boot: apt-get install -y linux-image-amd64"
		}
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		return "/bin/busybox missing: apt-get install -y busybox-static"
	}
	if _, err := exec.LookPath("cpio"); err != nil {
		return "cpio not found: apt-get install -y cpio"
	}
	return ""
}

// StartT starts a VM that is closed when the test ends.
func StartT(ctx context.Context, t testing.TB, cfg Config) *VM {
	t.Helper()
	vm, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Error(err)
		}
	})
	return vm
}
