package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"
)

// Options are the settings both ends of a session have. The zero value of
// every field means its default.
type Options struct {
	// MaxMessage is the largest message payload this side accepts
	// (default 4 MiB, at most 64 MiB).
	MaxMessage int
	// WindowMessages and WindowBytes bound what this side buffers for the
	// bulk lane it receives, and what its sender keeps unacknowledged
	// (the smaller of both sides' values applies). Defaults: 1024
	// messages, and 16 MiB or twice the bandwidth-delay product of
	// ExpectedRate and ExpectedRTT, whichever is larger (at most 1 GiB).
	WindowMessages int
	WindowBytes    int64

	// SocketBuffer sets SO_SNDBUF and SO_RCVBUF of every data connection.
	// When zero and ExpectedRate and ExpectedRTT are set, it is the
	// bandwidth-delay product divided by the number of data connections
	// (at least 128 KiB). When all three are zero the kernel autotunes.
	// Linux caps the value at net.core.wmem_max / rmem_max; Stats reports
	// what the kernel granted.
	SocketBuffer int
	// ExpectedRate (bytes per second) and ExpectedRTT describe the path.
	ExpectedRate int64
	ExpectedRTT  time.Duration

	// HandshakeTimeout bounds TCP connect, TLS and the Hello/Welcome
	// exchange of one connection (default 10 s).
	HandshakeTimeout time.Duration
	// IdleTimeout: a connection on which nothing arrives for this long is
	// treated as broken (default 15 s). Every connection sends a PING at
	// least every PingInterval (default IdleTimeout/10, at most 1 s).
	IdleTimeout  time.Duration
	PingInterval time.Duration
	// ResumeWindow is how long a session survives with its connections
	// broken (default 30 s). The dialer retries with backoff during it;
	// past it both sides fail the session with ErrLinkDown.
	ResumeWindow time.Duration
}

// Defaults.
const (
	DefaultMaxMessage       = 4 << 20
	DefaultWindowMessages   = 1024
	DefaultWindowBytes      = 16 << 20
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 15 * time.Second
	DefaultResumeWindow     = 30 * time.Second
	DefaultStreams          = 4
	DefaultMaxHandshakes    = 32
	DefaultMaxSessionsPeer  = 8
	DefaultAcceptBacklog    = 8

	// The priority lane is for small messages (QEMU's return path,
	// control); its window is fixed.
	priorityWindowMessages = 256
	priorityWindowBytes    = 1 << 20

	minSocketBuffer = 128 << 10
)

// DialFunc opens the TCP connection under TLS. wanlab.Lab.Dial, bound to a
// host, is one.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// DialConfig configures Dial.
type DialConfig struct {
	// Addr is the listener's host:port.
	Addr string
	// PeerName is the name the listener's certificate must carry; empty
	// means TLS.ServerName, or else the host part of Addr.
	PeerName string
	// TLS holds this host's certificate and the CA pool (certs.LoadTLS's
	// client config). TLS 1.3 is enforced whatever MinVersion says.
	TLS *tls.Config
	// Streams is the number of data connections (default 4, at most 64);
	// one control connection comes on top. Session.SetStreams changes it
	// while the session runs.
	Streams int
	// Dial opens TCP connections; nil means a net.Dialer.
	Dial DialFunc
	Options
}

// ListenConfig configures Listen.
type ListenConfig struct {
	// Addr is the address to listen on when Listener is nil.
	Addr string
	// Listener, if set, is used instead of listening on Addr (tests and
	// the WAN lab hand in a listener inside a network namespace). The
	// Listener closes it.
	Listener net.Listener
	// TLS holds this host's certificate and the CA pool that client
	// certificates must chain to (certs.LoadTLS's server config). TLS 1.3
	// and RequireAndVerifyClientCert are enforced.
	TLS *tls.Config
	// AllowedPeers, if not empty, lists the names (DNS SANs or IPs) of
	// which a dialer's certificate must carry at least one.
	AllowedPeers []string
	// MaxHandshakes bounds connections in TLS or Hello/Welcome at once
	// (default 32); more are closed at once.
	MaxHandshakes int
	// MaxSessionsPerPeer bounds live sessions per peer identity (default 8).
	MaxSessionsPerPeer int
	// MaxStreams bounds the data connections of a session, when the
	// dialer opens it and as it grows (default 16): a data connection
	// numbered above it is refused.
	MaxStreams int
	// AcceptBacklog bounds sessions opened but not yet returned by Accept
	// (default 8).
	AcceptBacklog int
	// OnHandshakeError, if set, is told of every connection refused or
	// failed during its handshake (bad certificate, wrong name, limits,
	// bad token). It must not block.
	OnHandshakeError func(remote net.Addr, err error)
	Options
}

// effective is Options with defaults applied and checked.
type effective struct {
	Options
	sockBuf int
}

func (o Options) resolve(streams int) (effective, error) {
	e := effective{Options: o}
	if e.MaxMessage == 0 {
		e.MaxMessage = DefaultMaxMessage
	}
	if e.WindowMessages == 0 {
		e.WindowMessages = DefaultWindowMessages
	}
	bdp := int64(0)
	if o.ExpectedRate > 0 && o.ExpectedRTT > 0 {
		bdp = int64(float64(o.ExpectedRate) * o.ExpectedRTT.Seconds())
	}
	if e.WindowBytes == 0 {
		e.WindowBytes = max(DefaultWindowBytes, 2*bdp, 2*int64(e.MaxMessage))
		e.WindowBytes = min(e.WindowBytes, hardMaxWindowByte)
	}
	if e.HandshakeTimeout == 0 {
		e.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if e.IdleTimeout == 0 {
		e.IdleTimeout = DefaultIdleTimeout
	}
	if e.PingInterval == 0 {
		e.PingInterval = min(e.IdleTimeout/10, time.Second)
	}
	if e.ResumeWindow == 0 {
		e.ResumeWindow = DefaultResumeWindow
	}
	switch {
	case e.MaxMessage < 1 || e.MaxMessage > hardMaxMessage:
		return e, fmt.Errorf("transport: MaxMessage %d out of range 1..%d", e.MaxMessage, hardMaxMessage)
	case e.WindowMessages < 1 || e.WindowMessages > hardMaxWindowMsgs:
		return e, fmt.Errorf("transport: WindowMessages %d out of range 1..%d", e.WindowMessages, hardMaxWindowMsgs)
	case e.WindowBytes < int64(e.MaxMessage) || e.WindowBytes > hardMaxWindowByte:
		return e, fmt.Errorf("transport: WindowBytes %d out of range MaxMessage (%d)..%d", e.WindowBytes, e.MaxMessage, hardMaxWindowByte)
	case e.HandshakeTimeout < 0 || e.IdleTimeout < 0 || e.ResumeWindow < 0 || e.PingInterval < 0:
		return e, errors.New("transport: negative timeout")
	case e.PingInterval >= e.IdleTimeout:
		return e, fmt.Errorf("transport: PingInterval %v must be shorter than IdleTimeout %v", e.PingInterval, e.IdleTimeout)
	case e.SocketBuffer < 0:
		return e, errors.New("transport: negative SocketBuffer")
	}
	e.sockBuf = e.SocketBuffer
	if e.sockBuf == 0 && bdp > 0 && streams > 0 {
		e.sockBuf = int(max(bdp/int64(streams), minSocketBuffer))
	}
	return e, nil
}

// checkTLS enforces TLS 1.3 with certificates. It returns a clone: the
// caller's config is never modified.
func checkTLS(c *tls.Config, server bool) (*tls.Config, error) {
	if c == nil {
		return nil, errors.New("transport: TLS config required (mutual TLS is not optional)")
	}
	c = c.Clone()
	c.MinVersion = tls.VersionTLS13
	c.MaxVersion = 0
	if len(c.Certificates) == 0 && c.GetCertificate == nil && c.GetClientCertificate == nil {
		return nil, errors.New("transport: TLS config has no certificate of this host")
	}
	if c.InsecureSkipVerify {
		return nil, errors.New("transport: InsecureSkipVerify is not allowed")
	}
	if server {
		if c.ClientCAs == nil {
			return nil, errors.New("transport: listener TLS config needs ClientCAs (the site CA)")
		}
		c.ClientAuth = tls.RequireAndVerifyClientCert
	} else if c.RootCAs == nil {
		return nil, errors.New("transport: dialer TLS config needs RootCAs (the site CA)")
	}
	return c, nil
}
