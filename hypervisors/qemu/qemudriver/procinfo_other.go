//go:build !linux

package qemudriver

import (
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/dwcp/dwcp/sdk"
)

// The driver reads peer credentials and /proc; elsewhere these fail and
// the features that need them (VM config, started VMs) are unsupported.

func peerPID(net.Conn) (int, error) {
	return 0, fmt.Errorf("peer credentials: %w on this platform", sdk.ErrUnsupported)
}

func readCmdline(pid int) ([]string, error) {
	return nil, fmt.Errorf("command line of pid %d: %w on this platform", pid, sdk.ErrUnsupported)
}

func processGone(int) bool { return true }

func killProcess(pid int, _ time.Duration) error {
	return fmt.Errorf("kill pid %d: %w on this platform", pid, sdk.ErrUnsupported)
}

func helperAttr() *syscall.SysProcAttr { return nil }

func detachedAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
