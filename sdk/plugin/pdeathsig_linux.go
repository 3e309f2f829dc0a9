//go:build linux

package plugin

import (
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// setParentDeathSignal asks the kernel to SIGTERM this process when its
// parent exits; the parent-pid watch covers the race where the parent died
// before this call.
func setParentDeathSignal() {
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0)
}

// killWithParent makes the kernel SIGKILL a child we start if we die.
func killWithParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}
