package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSessionsAreCountedByOutcome(t *testing.T) {
	m := New("v-test")
	end := m.Started(In)
	if got := testutil.ToFloat64(m.active.WithLabelValues("in")); got != 1 {
		t.Errorf("active while running: %v", got)
	}
	end(Session{Kind: Migration, Duration: 3 * time.Second, StreamBytes: 1000, WireBytes: 400, Downtime: 250 * time.Millisecond})
	m.Started(In)(Session{Kind: Transfer, Err: errors.New("peer went away"), StreamBytes: 10, WireBytes: 5})
	m.Started(Out)(Session{Kind: Migration, Duration: time.Second, StreamBytes: 7, WireBytes: 3, Downtime: 40 * time.Millisecond})

	for _, c := range []struct {
		got, want float64
		what      string
	}{
		{testutil.ToFloat64(m.active.WithLabelValues("in")), 0, "active in after the end"},
		{testutil.ToFloat64(m.sessions.WithLabelValues("in", "migration", "ok")), 1, "completed incoming migrations"},
		{testutil.ToFloat64(m.sessions.WithLabelValues("in", "transfer", "failed")), 1, "failed incoming transfers"},
		{testutil.ToFloat64(m.sessions.WithLabelValues("out", "migration", "ok")), 1, "completed outgoing migrations"},
		{testutil.ToFloat64(m.stream.WithLabelValues("in")), 1010, "stream bytes in (a failed session's too)"},
		{testutil.ToFloat64(m.wire.WithLabelValues("in")), 405, "wire bytes in"},
		{testutil.ToFloat64(m.wire.WithLabelValues("out")), 3, "wire bytes out"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.what, c.got, c.want)
		}
	}
	// Only completed sessions have a duration and a downtime.
	if n := testutil.CollectAndCount(m.duration); n != 2 {
		t.Errorf("%d duration series, want 2 (in/migration, out/migration)", n)
	}

	// The handler serves all of it, with the runtime's and the process's.
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`dwcp_sessions_total{direction="in",kind="migration",result="ok"} 1`,
		`dwcp_migration_downtime_seconds_bucket{direction="in",le="0.3"} 1`,
		`dwcp_migration_downtime_seconds_bucket{direction="out",le="0.05"} 1`,
		`dwcp_session_duration_seconds_count{direction="in",kind="migration"} 1`,
		`dwcp_build_info{version="v-test"} 1`,
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// A host without metrics passes a nil *Metrics around.
func TestNilMetricsIgnoresEverything(t *testing.T) {
	var m *Metrics
	m.Started(Out)(Session{Kind: Migration})
	m.Ended(Session{Direction: In, Kind: Transfer, Err: errors.New("x")})
}
