// Package migrate runs a live migration of one VM between two DWCP hosts:
// the source drives its hypervisor plugin and streams through the
// pipeline; the destination prepares its VM, feeds it the verified stream
// and resumes it only then.
//
// Failure semantics (docs/migration.md): until the destination reports
// its VM running, the source VM is never released — any failure cancels
// the migration on the source, where the VM keeps (or resumes) running,
// and the destination discards the VM it prepared. No path leaves a VM
// running nowhere or running twice.
//
// The package owns that choreography. It must not implement the data path
// (pipeline), the transport, or QMP (the hypervisor plugin).
package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/host/wire"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"google.golang.org/protobuf/proto"
)

// Conn is the session to the peer: the pipeline's connection.
type Conn = pipeline.Conn

// ErrDestinationFailed: the destination could not run the VM; the source
// VM was resumed.
var ErrDestinationFailed = errors.New("destination did not run the VM")

// ErrSuspendUnsupported: a migration asked to leave the destination VM
// paused, and the destination host (an older dwcp) or its hypervisor
// plugin cannot. The migration is refused before it starts.
var ErrSuspendUnsupported = errors.New("destination cannot leave the VM paused")

// endpoint is a unix socket path in a private directory.
func endpoint(dir, name string) (string, func(), error) {
	d, err := os.MkdirTemp(dir, "dwcp-mig-")
	if err != nil {
		return "", nil, fmt.Errorf("migration socket directory: %w", err)
	}
	return filepath.Join(d, name), func() { os.RemoveAll(d) }, nil
}

// lazyConn is the QEMU side of the source's unix socket: reads and writes
// wait until QEMU has connected.
type lazyConn struct {
	ln    net.Listener
	once  sync.Once
	ready chan struct{}
	conn  net.Conn
	err   error
}

func newLazyConn(ln net.Listener) *lazyConn {
	return &lazyConn{ln: ln, ready: make(chan struct{})}
}

// accept waits for QEMU's connection; it runs once, on its own goroutine.
func (l *lazyConn) accept() {
	l.once.Do(func() {
		l.conn, l.err = l.ln.Accept()
		close(l.ready)
	})
}

func (l *lazyConn) wait() (net.Conn, error) {
	<-l.ready
	return l.conn, l.err
}

func (l *lazyConn) Read(p []byte) (int, error) {
	c, err := l.wait()
	if err != nil {
		return 0, err
	}
	return c.Read(p)
}

func (l *lazyConn) Write(p []byte) (int, error) {
	c, err := l.wait()
	if err != nil {
		return 0, err
	}
	return c.Write(p)
}

// SetReadDeadline lets the pipeline unblock a pending Read on cancel.
func (l *lazyConn) SetReadDeadline(t time.Time) error {
	select {
	case <-l.ready:
		if l.conn != nil {
			return l.conn.SetReadDeadline(t)
		}
		return nil
	default:
		// Not connected yet: closing the listener ends a pending accept.
		// When none was started (the destination refused at the hello,
		// before QEMU was told to migrate), nothing else would ever end
		// the wait, so it is ended here.
		err := l.ln.Close()
		l.once.Do(func() {
			l.err = fmt.Errorf("QEMU never connected: %w", net.ErrClosed)
			close(l.ready)
		})
		return err
	}
}

func (l *lazyConn) Close() error {
	err := l.ln.Close()
	select {
	case <-l.ready:
		if l.conn != nil {
			return l.conn.Close()
		}
	default:
	}
	return err
}

func sendResult(ctx context.Context, c Conn, r *streamv1.MigrationResult) error {
	body, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	return c.Send(ctx, wire.AppendBlob(nil, wire.TypeResult, body))
}

func recvResult(ctx context.Context, c Conn) (*streamv1.MigrationResult, error) {
	for {
		f, err := c.Recv(ctx)
		if err != nil {
			return nil, fmt.Errorf("wait for the destination's result: %w", err)
		}
		switch wire.TypeOf(f) {
		case wire.TypeResult:
			body, _ := wire.ParseBlob(f, wire.TypeResult)
			var r streamv1.MigrationResult
			if err := proto.Unmarshal(body, &r); err != nil {
				return nil, fmt.Errorf("destination result: %w", err)
			}
			return &r, nil
		case wire.TypeReturn, wire.TypeControl:
			// Late return-path bytes: the source QEMU has finished.
		default:
			return nil, fmt.Errorf("unexpected %s frame while waiting for the result", wire.TypeOf(f))
		}
	}
}

// waitState polls the hypervisor until the migration reaches a final
// state.
func waitState(ctx context.Context, hv hypervisor.Hypervisor, id string, timeout time.Duration) (hypervisor.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		st, err := hv.QueryMigration(ctx, id)
		if err != nil {
			return st, err
		}
		switch st.State {
		case "completed", "failed", "cancelled":
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("migration %s still %q after %s", id, st.State, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var _ io.ReadWriter = (*lazyConn)(nil)
