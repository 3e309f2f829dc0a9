package testguest

import "syscall"

// childProcAttr makes the kernel kill QEMU when the process that started it dies,
// so a crashed or killed test never leaves an emulator running. Pdeathsig is tied
// to the starting OS thread; the Go runtime only retires threads of goroutines that
// exit while locked to them, which nothing here does.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
