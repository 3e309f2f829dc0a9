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

// setCork holds (on) or releases (off) partial TCP segments of c
// (TCP_CORK). A data connection's writer corks while it writes a run of
// frames: TLS hands the socket one 16 KiB record per write, and with Go's
// TCP_NODELAY each record would leave as its own segment; corked, the
// kernel sends only full segments, and uncorking when the writer has
// nothing more flushes the tail at once. Best effort, like
// setNotsentLowat; it reports whether the option was set.
func setCork(c net.Conn, on bool) bool {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, v) }); err != nil || serr != nil {
		return false
	}
	return true
}
