package transport

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A data connection's writer sends whole segments: TLS writes one 16 KiB
// record at a time, and without the cork (setCork) each record left as its
// own segment (seen in the lab's datacenter profile: 13-15 KB per packet
// against QEMU's 64 KB, and the per-packet cost on both hosts and the
// lab's shaper with it). Measured on loopback (MSS about 64 KiB) from the
// kernel's own counters of the sending socket.
func TestDataConnectionsSendFullSegments(t *testing.T) {
	var mu sync.Mutex
	var conns []*net.TCPConn
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			mu.Lock()
			conns = append(conns, tc)
			mu.Unlock()
		}
		return c, err
	}
	opts := Options{MaxMessage: 1 << 20}
	e := newEnv(t, ListenConfig{Options: opts}, DialConfig{Streams: 1, Dial: dial, Options: opts})
	cli, srv := e.pair()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n, size = 48, 1 << 20
	done := make(chan error, 1)
	go func() {
		for range n {
			if _, err := srv.Recv(ctx); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	msg := make([]byte, size)
	for i := range n {
		msg[0] = byte(i)
		if err := cli.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	checked := 0
	for _, c := range conns {
		rc, err := c.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var ti *unix.TCPInfo
		var gerr error
		if err := rc.Control(func(fd uintptr) { ti, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || gerr != nil {
			t.Fatal(err, gerr)
		}
		if ti.Bytes_sent < n*size/2 {
			continue // the control connection
		}
		checked++
		perSegment := float64(ti.Bytes_sent) / float64(ti.Data_segs_out)
		t.Logf("data connection: %d bytes in %d segments (%.0f B each; MSS %d)", ti.Bytes_sent, ti.Data_segs_out, perSegment, ti.Snd_mss)
		if perSegment < 0.75*float64(ti.Snd_mss) {
			t.Errorf("%.0f bytes per segment, want close to the MSS %d: partial segments leave one by one", perSegment, ti.Snd_mss)
		}
	}
	if checked != 1 {
		t.Fatalf("%d data connections carried the stream, want 1", checked)
	}
}
