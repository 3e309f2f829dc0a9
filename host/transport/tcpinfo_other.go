//go:build !linux

package transport

import (
	"net"
	"syscall"
)

// tcpState: see tcpinfo_linux.go. Elsewhere the kernel's view is not
// read, and added connections are not warmed.
type tcpState struct {
	rate float64
}

func readTCPState(net.Conn) (tcpState, bool) { return tcpState{}, false }

func setNotsentLowat(net.Conn, int) {}

func rawConn(net.Conn) syscall.RawConn { return nil }

func setCork(syscall.RawConn, bool) bool { return false }
