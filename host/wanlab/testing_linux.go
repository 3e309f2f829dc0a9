//go:build linux

package wanlab

import (
	"context"
	"os"
)

// TB is the part of testing.TB that NewTest uses.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

// RequireEnv is the variable that turns a skipped lab test into a failure.
// CI sets it to 1 so that a lab test never silently skips there.
const RequireEnv = "DWCP_REQUIRE_ROOT_TESTS"

// SkipUnlessAvailable skips the test when this machine cannot run a lab,
// or fails it when RequireEnv is set to 1.
func SkipUnlessAvailable(tb TB) {
	tb.Helper()
	if err := Available(); err != nil {
		if os.Getenv(RequireEnv) == "1" {
			tb.Fatalf("%v (%s=1 requires lab tests to run)", err, RequireEnv)
		}
		tb.Skipf("skipping lab test: %v (run as root with /dev/net/tun; %s=1 makes this a failure)", err, RequireEnv)
	}
}

// NewTest builds a lab for a test, skipping as SkipUnlessAvailable does,
// and closes it when the test ends, also when it fails or panics.
func NewTest(tb TB, cfg Config) *Lab {
	tb.Helper()
	SkipUnlessAvailable(tb)
	if cfg.Logf == nil {
		cfg.Logf = tb.Logf
	}
	l, err := New(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("%v", err)
		}
	})
	return l
}
