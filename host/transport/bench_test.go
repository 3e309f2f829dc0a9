package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// benchBytes is what one benchmark iteration moves, so that even
// `-benchtime 1x` measures something real.
const benchBytes = 64 << 20

// BenchmarkThroughput moves benchBytes per iteration from dialer to
// listener through a session over loopback, and in the same run the same
// bytes through one plain TCP connection (io.Copy) and one TLS 1.3
// connection (io.Copy): the ratios say what the session's framing,
// windows, checksums and striping cost over the bare transports.
func BenchmarkThroughput(b *testing.B) {
	for _, streams := range []int{1, 4} {
		for _, size := range []int{64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("streams=%d/msg=%dKiB", streams, size>>10), func(b *testing.B) {
				e := newEnv(b, ListenConfig{}, DialConfig{Streams: streams})
				cli, srv := e.pair()
				msg := make([]byte, size)
				for i := range msg {
					msg[i] = byte(i * 7)
				}
				perIter := benchBytes / size
				ctx := context.Background()
				b.SetBytes(benchBytes)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				done := make(chan error, 1)
				go func() {
					var buf []byte
					var err error
					for range b.N * perIter {
						if buf, err = srv.RecvAppend(ctx, buf[:0]); err != nil {
							break
						}
					}
					done <- err
				}()
				for range b.N * perIter {
					if err := cli.Send(ctx, msg); err != nil {
						b.Fatal(err)
					}
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				session := time.Since(start)
				b.StopTimer()
				total := int64(b.N) * benchBytes
				tcp := copyBaseline(b, total, size, false)
				tlsT := copyBaseline(b, total, size, true)
				b.ReportMetric(float64(total)/session.Seconds()/1e6, "session_MB/s")
				b.ReportMetric(float64(total)/tcp.Seconds()/1e6, "tcp_MB/s")
				b.ReportMetric(float64(total)/tlsT.Seconds()/1e6, "tls_MB/s")
				b.ReportMetric(tcp.Seconds()/session.Seconds(), "x_tcp")
				b.ReportMetric(tlsT.Seconds()/session.Seconds(), "x_tls")
			})
		}
	}
}

// copyBaseline times io.Copy of total bytes, written in chunks of size,
// over one loopback TCP connection, with or without TLS 1.3 (the same
// certificates as the session).
func copyBaseline(b *testing.B, total int64, size int, useTLS bool) time.Duration {
	b.Helper()
	p := testPKI(b)
	srvTLS, _ := p.configs("dst")
	_, cliTLS := p.configs("src")
	cliTLS.ServerName = "dst"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		var r io.Reader = c
		if useTLS {
			r = tls.Server(c, srvTLS)
		}
		n, err := io.Copy(io.Discard, r)
		if err == nil && n != total {
			err = fmt.Errorf("baseline received %d of %d bytes", n, total)
		}
		got <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	var w io.WriteCloser = c
	if useTLS {
		tc := tls.Client(c, cliTLS)
		if err := tc.Handshake(); err != nil {
			b.Fatal(err)
		}
		w = tc
	}
	chunk := make([]byte, size)
	start := time.Now()
	for left := total; left > 0; left -= int64(size) {
		if _, err := w.Write(chunk[:min(int64(size), left)]); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	if err := <-got; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}
