//go:build linux

package transport

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpState is what the kernel says about one TCP connection's sending
// side.
type tcpState struct {
	// rate is the connection's latest delivery-rate sample, bytes/s.
	rate float64
}

// readTCPState reads TCP_INFO of c; ok is false when c is not a kernel
// TCP socket (a test's pipe, a wrapped connection).
func readTCPState(c net.Conn) (tcpState, bool) {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return tcpState{}, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return tcpState{}, false
	}
	var ti *unix.TCPInfo
	var gerr error
	if err := rc.Control(func(fd uintptr) { ti, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || gerr != nil {
		return tcpState{}, false
	}
	return tcpState{rate: float64(ti.Delivery_rate)}, true
}

// setNotsentLowat bounds the bytes c's socket holds that TCP has not sent
// yet (TCP_NOTSENT_LOWAT): a write blocks while more are queued. Best
// effort: a connection that is not a kernel TCP socket is left alone.
func setNotsentLowat(c net.Conn, n int) {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return
	}
	if rc, err := sc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n) })
	}
}
