// Package metrics owns what a DWCP host exposes to a monitoring system:
// the Prometheus metric families of sessions and migrations in both
// directions, their registry, and the HTTP handler that serves them
// (`dwcp serve --metrics ADDR`). Callers report each session once, when
// it ends, with its outcome; the package turns that into counters,
// gauges and histograms an operator's dashboards and alerts can use.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Direction says which side of a session this host was.
type Direction string

const (
	In  Direction = "in"  // this host received (the destination)
	Out Direction = "out" // this host sent (the source)
)

// Kind is what a session carried.
type Kind string

const (
	Migration Kind = "migration" // a live QEMU migration
	Transfer  Kind = "transfer"  // a file or stream (`dwcp send`)
)

// Session is one ended session as the host saw it.
type Session struct {
	Direction Direction
	Kind      Kind
	// Err is why it failed; nil: it completed (the destination VM runs, or
	// the file was written and its digest verified).
	Err error
	// Duration is the session's time from its first byte to its end.
	Duration time.Duration
	// StreamBytes and WireBytes: the stream carried (QEMU's, or the
	// file's) and the bytes of frames on the wire, as far as it got.
	StreamBytes, WireBytes uint64
	// Downtime of a completed migration, where measured (0: unknown).
	Downtime time.Duration
}

// Metrics is a host's metric families and their registry. The zero value
// is not usable: use New. A nil *Metrics ignores every call, so callers
// need not check whether metrics are on.
type Metrics struct {
	reg      *prometheus.Registry
	sessions *prometheus.CounterVec
	active   *prometheus.GaugeVec
	stream   *prometheus.CounterVec
	wire     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	downtime *prometheus.HistogramVec
}

// New builds the registry: DWCP's families, the Go runtime's and the
// process's (CPU, memory, file descriptors), and a build-info gauge.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.sessions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dwcp_sessions_total",
		Help: "Sessions that ended, by direction (in: this host received), kind (migration, transfer) and result (ok, failed).",
	}, []string{"direction", "kind", "result"})
	m.active = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "dwcp_sessions_active",
		Help: "Sessions running now, by direction.",
	}, []string{"direction"})
	bytesByDirection := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"direction"})
	}
	m.stream = bytesByDirection("dwcp_stream_bytes_total",
		"Stream bytes carried by ended sessions (QEMU's migration stream or the file), by direction.")
	m.wire = bytesByDirection("dwcp_wire_bytes_total",
		"Bytes of frames on the wire of ended sessions (compressed, before TLS), by direction.")
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "dwcp_session_duration_seconds",
		Help:    "Duration of sessions that completed, by direction and kind.",
		Buckets: []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800},
	}, []string{"direction", "kind"})
	m.downtime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "dwcp_migration_downtime_seconds",
		Help:    "Downtime of completed migrations (source VM stopped to destination VM running), by direction.",
		Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5},
	}, []string{"direction"})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "dwcp_build_info",
		Help: "Always 1; the label says which dwcp build runs.",
	}, []string{"version"})
	info.WithLabelValues(version).Set(1)
	m.reg.MustRegister(m.sessions, m.active, m.stream, m.wire, m.duration, m.downtime, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Started counts a session in dwcp_sessions_active until the returned
// function reports it ended (call that exactly once).
func (m *Metrics) Started(d Direction) func(Session) {
	if m == nil {
		return func(Session) {}
	}
	g := m.active.WithLabelValues(string(d))
	g.Inc()
	return func(s Session) {
		g.Dec()
		s.Direction = d
		m.Ended(s)
	}
}

// Ended records one ended session.
func (m *Metrics) Ended(s Session) {
	if m == nil {
		return
	}
	result := "ok"
	if s.Err != nil {
		result = "failed"
	}
	d := string(s.Direction)
	m.sessions.WithLabelValues(d, string(s.Kind), result).Inc()
	m.stream.WithLabelValues(d).Add(float64(s.StreamBytes))
	m.wire.WithLabelValues(d).Add(float64(s.WireBytes))
	if s.Err != nil {
		return
	}
	m.duration.WithLabelValues(d, string(s.Kind)).Observe(s.Duration.Seconds())
	if s.Kind == Migration && s.Downtime > 0 {
		m.downtime.WithLabelValues(d).Observe(s.Downtime.Seconds())
	}
}

// Handler serves the registry in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
