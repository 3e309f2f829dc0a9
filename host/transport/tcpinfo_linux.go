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

// rawConn returns c's kernel socket, or nil when c is not one (a test's
// pipe, a wrapped connection): the socket options below are then left
// alone.
func rawConn(c net.Conn) syscall.RawConn {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// onSocket runs f on c's socket; false when c is not a kernel socket or f
// failed.
func onSocket(rc syscall.RawConn, f func(fd int) error) bool {
	if rc == nil {
		return false
	}
	var ferr error
	err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) })
	return err == nil && ferr == nil
}

// readTCPState reads TCP_INFO of c; ok is false when c is not a kernel
// TCP socket (a test's pipe, a wrapped connection).
func readTCPState(c net.Conn) (tcpState, bool) {
	var ti *unix.TCPInfo
	ok := onSocket(rawConn(c), func(fd int) (err error) {
		ti, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		return err
	})
	if !ok {
		return tcpState{}, false
	}
	return tcpState{rate: float64(ti.Delivery_rate)}, true
}

// setNotsentLowat bounds the bytes c's socket holds that TCP has not sent
// yet (TCP_NOTSENT_LOWAT): a write blocks while more are queued. Best
// effort: a connection that is not a kernel TCP socket is left alone.
func setNotsentLowat(c net.Conn, n int) {
	onSocket(rawConn(c), func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n) })
}

// setCork holds (on) or releases (off) partial TCP segments of the socket
// rc (TCP_CORK; rc from rawConn, resolved once by the writer). A data
// connection's writer corks while it writes a run of frames: TLS hands
// the socket one 16 KiB record per write, and with Go's TCP_NODELAY each
// record would leave as its own segment; corked, the kernel sends only
// full segments, and uncorking when the writer has nothing more flushes
// the tail at once. Best effort, like setNotsentLowat; it reports whether
// the option was set.
func setCork(rc syscall.RawConn, on bool) bool {
	v := 0
	if on {
		v = 1
	}
	return onSocket(rc, func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_CORK, v) })
}
