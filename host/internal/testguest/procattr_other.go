//go:build !linux

package testguest

import "syscall"

// childProcAttr has no parent-death signal outside Linux; Close is the only guard.
func childProcAttr() *syscall.SysProcAttr { return nil }
