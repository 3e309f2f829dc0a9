//go:build unix

package transport

import (
	"net"
	"syscall"
)

// setSocketBuffers asks for SO_SNDBUF and SO_RCVBUF of size; the kernel
// may grant less (Linux: net.core.wmem_max / rmem_max).
func setSocketBuffers(c net.Conn, size int) {
	type bufferSetter interface {
		SetReadBuffer(int) error
		SetWriteBuffer(int) error
	}
	if b, ok := c.(bufferSetter); ok {
		b.SetReadBuffer(size)
		b.SetWriteBuffer(size)
	}
}

// socketBuffers reads back the buffer sizes in force. Linux reports twice
// what was set (it counts its bookkeeping overhead); the value is passed on
// as the kernel reports it.
func socketBuffers(c net.Conn) (snd, rcv int, ok bool) {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return 0, 0, false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var e1, e2 error
	err = rc.Control(func(fd uintptr) {
		snd, e1 = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF)
		rcv, e2 = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	return snd, rcv, err == nil && e1 == nil && e2 == nil
}
