//go:build !linux

package modes

import (
	"fmt"
	"runtime"
	"syscall"
)

func tcpCounters(syscall.Conn) (TCPCounters, bool, error) {
	return TCPCounters{}, false, fmt.Errorf("tcp info on %s: %w", runtime.GOOS, ErrNoTCPInfo)
}

func sendState(syscall.Conn) (SendState, error) {
	return SendState{}, fmt.Errorf("tcp info on %s: %w", runtime.GOOS, ErrNoTCPInfo)
}
