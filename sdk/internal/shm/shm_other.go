//go:build !linux

package shm

import (
	"context"
	"os"
	"time"
)

// Client is the host side of a shared-memory channel. On this platform no
// channel can be made: NewClient returns ErrUnsupported and callers use the
// gRPC fallback.
type Client struct{}

// Pair returns ErrUnsupported: the data plane needs memfd and SEQPACKET.
func Pair() (host, plugin *os.File, err error) { return nil, nil, ErrUnsupported }

// NewClient returns ErrUnsupported; it closes conn as the Linux version
// would on failure.
func NewClient(ctx context.Context, conn *os.File, opts ClientOptions) (*Client, error) {
	if conn != nil {
		conn.Close()
	}
	return nil, ErrUnsupported
}

// Call returns ErrUnsupported.
func (c *Client) Call(ctx context.Context, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	return dst, ErrUnsupported
}

// CallTimeout never runs: NewClient never returns a Client here.
func (c *Client) CallTimeout(ctx context.Context, timeout time.Duration, op uint32, arg int64, in, dst []byte, maxOut int) ([]byte, error) {
	return dst, ErrUnsupported
}

// Close does nothing.
func (c *Client) Close() error { return nil }

// Done returns a closed channel: there is never a live channel here.
func (c *Client) Done() <-chan struct{} { return closedChan }

// Err returns ErrUnsupported.
func (c *Client) Err() error { return ErrUnsupported }

var closedChan = func() chan struct{} { ch := make(chan struct{}); close(ch); return ch }()

// Limits reports zero: nothing fits.
func (c *Client) Limits() (maxIn, maxOut int) { return 0, 0 }

// Serve returns ErrUnsupported; it closes conn as the Linux version does.
func Serve(ctx context.Context, conn *os.File, h Handler, workers int) error {
	if conn != nil {
		conn.Close()
	}
	return ErrUnsupported
}

// Lease is a slot held between TryLease and Release. None exist here.
type Lease struct{}

// TryLease never succeeds on this platform.
func (c *Client) TryLease() (Lease, bool) { return Lease{}, false }

// Input returns nil.
func (l Lease) Input() []byte { return nil }

// Call returns ErrLeaseReleased: no Lease is ever live here.
func (l Lease) Call(ctx context.Context, op uint32, arg int64, inLen, maxOut int) ([]byte, error) {
	return nil, ErrLeaseReleased
}

// CallTimeout returns ErrLeaseReleased.
func (l Lease) CallTimeout(ctx context.Context, timeout time.Duration, op uint32, arg int64, inLen, maxOut int) ([]byte, error) {
	return nil, ErrLeaseReleased
}

// Release does nothing.
func (l Lease) Release() {}

// Output returns nil.
func (l Lease) Output() []byte { return nil }

// CallBatch returns ErrLeaseReleased: no Lease is ever live here.
func (l Lease) CallBatch(ctx context.Context, entries []BatchEntry, results []BatchResult) error {
	return ErrLeaseReleased
}

// CallBatchTimeout returns ErrLeaseReleased.
func (l Lease) CallBatchTimeout(ctx context.Context, timeout time.Duration, entries []BatchEntry, results []BatchResult) error {
	return ErrLeaseReleased
}

// BatchOutput returns ErrLeaseReleased.
func (l Lease) BatchOutput(e BatchEntry, r BatchResult) ([]byte, error) {
	return nil, ErrLeaseReleased
}
