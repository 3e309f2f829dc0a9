//go:build !unix

package transport

import "net"

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

func socketBuffers(net.Conn) (snd, rcv int, ok bool) { return 0, 0, false }
