package qemudriver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// peerPID is the pid of the process that listens on the other end of a
// unix connection (SO_PEERCRED): the QEMU that owns a QMP socket.
func peerPID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, fmt.Errorf("peer credentials: %T is not a unix connection", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("peer credentials: %w", cerr)
	}
	if cred.Pid <= 0 {
		return 0, errors.New("peer credentials: no pid")
	}
	return int(cred.Pid), nil
}

// readCmdline returns a process's argv from /proc/PID/cmdline.
func readCmdline(pid int) ([]string, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, fmt.Errorf("command line of pid %d: %w", pid, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxArgBytes+maxArgs+1))
	if err != nil {
		return nil, fmt.Errorf("command line of pid %d: %w", pid, err)
	}
	if len(b) > maxArgBytes+maxArgs {
		return nil, fmt.Errorf("command line of pid %d: over %d bytes", pid, maxArgBytes)
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, fmt.Errorf("command line of pid %d: empty (a kernel thread or a zombie)", pid)
	}
	parts := bytes.Split(b, []byte{0})
	argv := make([]string, len(parts))
	for i, p := range parts {
		argv[i] = string(p)
	}
	return argv, nil
}

// processGone reports whether pid no longer runs: it does not exist or is
// a zombie waiting for its parent.
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	// The state follows the command name, which is in parentheses and may
	// itself hold parentheses: look after the last one.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'Z' || b[i+2] == 'X'
}

// killProcess sends SIGKILL to pid and waits up to wait for it to be gone.
func killProcess(pid int, wait time.Duration) error {
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(wait)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("kill pid %d: still running after %s", pid, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// helperAttr makes the kernel kill a helper process (the fingerprint
// probe) when the plugin dies: it must never outlive its purpose.
func helperAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// detachedAttr starts a VM in its own session and, unlike helperAttr,
// without a parent-death signal: a started VM must outlive the plugin.
func detachedAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setsid: true}
}
