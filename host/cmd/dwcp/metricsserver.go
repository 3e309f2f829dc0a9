package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/metrics"
)

// metricsServer serves a host's metrics over HTTP (`dwcp serve
// --metrics ADDR`): GET /metrics in Prometheus' text format.
type metricsServer struct {
	srv  *http.Server
	ln   net.Listener
	wg   sync.WaitGroup
	addr string
}

// startMetrics listens on addr and serves m until Close; logf hears of a
// server that stopped on its own.
func startMetrics(addr string, m *metrics.Metrics, logf func(string, ...any)) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	s := &metricsServer{ln: ln, addr: ln.Addr().String(), srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
	}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			// Serve fails only when the listener does; the daemon goes on
			// without metrics rather than stopping migrations for them.
			logf("metrics server stopped: %v", err)
		}
	}()
	return s, nil
}

// Close stops serving and waits for the server's goroutine.
func (s *metricsServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.wg.Wait()
	return err
}
