package testguest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// MigrationInfo is the part of query-migrate this package reads (QEMU 7.2 names).
type MigrationInfo struct {
	Status             string    `json:"status"`
	TotalTimeMs        int64     `json:"total-time"`
	DowntimeMs         int64     `json:"downtime"`
	ExpectedDowntimeMs int64     `json:"expected-downtime"`
	SetupTimeMs        int64     `json:"setup-time"`
	ErrorDesc          string    `json:"error-desc"`
	RAM                *RAMStats `json:"ram"`
}

// RAMStats is query-migrate's "ram" object. Duplicate counts zero pages (sent as
// flag-only records), Normal full 4 KiB pages; both include re-sends of pages the
// guest dirtied again, so over a multi-pass migration they exceed the guest's page
// count.
type RAMStats struct {
	Transferred    int64   `json:"transferred"`
	Remaining      int64   `json:"remaining"`
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"`
	Normal         int64   `json:"normal"`
	NormalBytes    int64   `json:"normal-bytes"`
	DirtyPagesRate int64   `json:"dirty-pages-rate"`
	Mbps           float64 `json:"mbps"`
	DirtySyncCount int64   `json:"dirty-sync-count"`
	PageSize       int64   `json:"page-size"`
	PagesPerSecond int64   `json:"pages-per-second"`
	PrecopyBytes   int64   `json:"precopy-bytes"`
	DowntimeBytes  int64   `json:"downtime-bytes"`
}

// QueryMigrate runs query-migrate.
func (v *VM) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	raw, err := v.QMP(ctx, "query-migrate", nil)
	if err != nil {
		return MigrationInfo{}, err
	}
	var mi MigrationInfo
	if err := json.Unmarshal(raw, &mi); err != nil {
		return MigrationInfo{}, fmt.Errorf("query-migrate reply: %w", err)
	}
	return mi, nil
}

// MigrationParams are set with migrate-set-parameters before a migration; zero
// fields are left as they are.
type MigrationParams struct {
	MaxBandwidth    int64 // bytes/s; QEMU 7.2's default is 128 MiB/s
	DowntimeLimitMs int64 // QEMU's default is 300
}

// SetMigrationParams applies the non-zero fields of p.
func (v *VM) SetMigrationParams(ctx context.Context, p MigrationParams) error {
	args := map[string]int64{}
	if p.MaxBandwidth > 0 {
		args["max-bandwidth"] = p.MaxBandwidth
	}
	if p.DowntimeLimitMs > 0 {
		args["downtime-limit"] = p.DowntimeLimitMs
	}
	if len(args) == 0 {
		return nil
	}
	_, err := v.QMP(ctx, "migrate-set-parameters", args)
	return err
}

// MigrateIncoming points a VM started with Incoming "defer" at uri.
func (v *VM) MigrateIncoming(ctx context.Context, uri string) error {
	_, err := v.QMP(ctx, "migrate-incoming", map[string]string{"uri": uri})
	return err
}

// Migrate sets p, starts an outgoing migration to uri and waits until it ends.
// A migration that fails is an error carrying QEMU's error-desc; when ctx ends
// first the migration is cancelled, so the guest keeps running here.
func (v *VM) Migrate(ctx context.Context, uri string, p MigrationParams) (MigrationInfo, error) {
	if err := v.SetMigrationParams(ctx, p); err != nil {
		return MigrationInfo{}, fmt.Errorf("migrate to %s: %w", uri, err)
	}
	if _, err := v.QMP(ctx, "migrate", map[string]string{"uri": uri}); err != nil {
		return MigrationInfo{}, fmt.Errorf("migrate to %s: %w", uri, err)
	}
	mi, err := v.waitMigration(ctx, 100*time.Millisecond, nil)
	if err != nil {
		return mi, fmt.Errorf("migrate to %s: %w", uri, err)
	}
	return mi, nil
}

// waitMigration polls query-migrate until a final state; each sample goes to
// onSample first (it may adjust parameters). On ctx end it cancels the migration.
func (v *VM) waitMigration(ctx context.Context, poll time.Duration, onSample func(MigrationInfo) error) (MigrationInfo, error) {
	var mi MigrationInfo
	for {
		var err error
		mi, err = v.QueryMigrate(ctx)
		if err != nil {
			return mi, v.cancelMigration(err)
		}
		switch mi.Status {
		case "completed":
			return v.settle(ctx, mi), nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		if onSample != nil {
			if err := onSample(mi); err != nil {
				return mi, v.cancelMigration(err)
			}
		}
		select {
		case <-ctx.Done():
			return mi, v.cancelMigration(ctx.Err())
		case <-time.After(poll):
		}
	}
}

// settle re-reads a completed migration: total-time and downtime can still read 0
// in the first query after the status turned to completed.
func (v *VM) settle(ctx context.Context, mi MigrationInfo) MigrationInfo {
	for i := 0; i < 10 && mi.TotalTimeMs == 0; i++ {
		time.Sleep(20 * time.Millisecond)
		again, err := v.QueryMigrate(ctx)
		if err != nil || again.Status != "completed" {
			break
		}
		mi = again
	}
	return mi
}

// cancelMigration stops an outgoing migration after err, with a fresh context
// because the caller's may be the reason for stopping.
func (v *VM) cancelMigration(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, cerr := v.QMP(ctx, "migrate_cancel", nil); cerr != nil {
		return fmt.Errorf("%w (migrate_cancel: %v)", err, cerr)
	}
	return err
}

// CaptureOptions tune VM.Capture.
type CaptureOptions struct {
	// MaxBandwidth is QEMU's max-bandwidth during the capture in bytes/s;
	// 0 means 8 GiB/s, which is no limit on this path.
	MaxBandwidth int64
	// DowntimeLimitMs is the downtime-limit that lets the migration complete;
	// 0 means QEMU's default, 300.
	DowntimeLimitMs int64
	// MinPasses, when above 0, holds the switchover back until query-migrate
	// reports that many dirty-bitmap syncs: the downtime-limit is 1 ms until then,
	// which a guest that dirties memory cannot meet, and DowntimeLimitMs after.
	// QEMU 7.2 still completes at once when a sync finds no dirty page at all, so
	// this is a floor only for a guest that keeps writing; CaptureResult.Passes
	// says what happened.
	MinPasses int64
	// KeepPaused leaves the guest paused in "postmigrate" afterwards; by default it
	// is resumed ("cont") so it can be captured again later.
	KeepPaused bool
	// Poll is the query-migrate interval; 100 ms when 0.
	Poll time.Duration
}

// CaptureResult describes one captured stream.
type CaptureResult struct {
	Path   string
	Bytes  int64         // bytes QEMU wrote, all of them now in Path
	Wall   time.Duration // from the migrate command until the stream was on disk
	Info   MigrationInfo // final query-migrate (status completed)
	Stream StreamInfo
}

// Passes is query-migrate's dirty-sync-count: one sync before the first pass over
// RAM and one before each further pass.
func (r CaptureResult) Passes() int64 {
	if r.Info.RAM == nil {
		return 0
	}
	return r.Info.RAM.DirtySyncCount
}

var captureSeq atomic.Int64

// Capture migrates the VM into a unix socket that this process reads into out,
// the way DWCP ingests a stream, with no destination: QEMU without return-path
// reports completed once the last byte is written. The file is checked with
// InspectStream before Capture returns.
func (v *VM) Capture(ctx context.Context, out string, opt CaptureOptions) (CaptureResult, error) {
	res := CaptureResult{Path: out}
	if opt.MaxBandwidth == 0 {
		opt.MaxBandwidth = 8 << 30
	}
	if opt.DowntimeLimitMs == 0 {
		opt.DowntimeLimitMs = 300
	}
	if opt.Poll == 0 {
		opt.Poll = 100 * time.Millisecond
	}
	sock := filepath.Join(v.dir, fmt.Sprintf("capture-%d.sock", captureSeq.Add(1)))
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	defer os.Remove(sock)
	f, err := os.Create(out)
	if err != nil {
		_ = ln.Close()
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	rd := newStreamReader(ln, f)
	copied := make(chan error, 1)
	go func() { copied <- rd.run() }()
	// Whatever happens below, the reader goroutine is stopped and waited for.
	finished := false
	defer func() {
		if !finished {
			rd.abort()
			<-copied
		}
	}()

	limit := opt.DowntimeLimitMs
	if opt.MinPasses > 0 {
		limit = 1
	}
	if err := v.SetMigrationParams(ctx, MigrationParams{MaxBandwidth: opt.MaxBandwidth, DowntimeLimitMs: limit}); err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	start := time.Now()
	if _, err := v.QMP(ctx, "migrate", map[string]string{"uri": "unix:" + sock}); err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	held := opt.MinPasses > 0
	mi, err := v.waitMigration(ctx, opt.Poll, func(mi MigrationInfo) error {
		if held && mi.RAM != nil && mi.RAM.DirtySyncCount >= opt.MinPasses {
			held = false
			return v.SetMigrationParams(ctx, MigrationParams{DowntimeLimitMs: opt.DowntimeLimitMs})
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	select {
	case err = <-copied:
		finished = true
	case <-ctx.Done():
		return res, fmt.Errorf("capture %s: waiting for the stream's end: %w", out, ctx.Err())
	}
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	res.Wall = time.Since(start)
	res.Info = mi
	res.Bytes = rd.n
	if err := v.SetMigrationParams(ctx, MigrationParams{DowntimeLimitMs: 300}); err != nil {
		return res, fmt.Errorf("capture %s: restore downtime-limit: %w", out, err)
	}
	if !opt.KeepPaused {
		if _, err := v.QMP(ctx, "cont", nil); err != nil {
			return res, fmt.Errorf("capture %s: resume guest: %w", out, err)
		}
	}
	sf, err := os.Open(out)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	defer sf.Close()
	res.Stream, err = InspectStream(sf, res.Bytes)
	if err != nil {
		return res, fmt.Errorf("capture %s: %w", out, err)
	}
	return res, nil
}

// streamReader accepts QEMU's one connection and copies it into a file. abort
// unblocks it from another goroutine at any point.
type streamReader struct {
	ln net.Listener
	f  *os.File
	n  int64

	mu      sync.Mutex
	conn    net.Conn
	aborted bool
}

func newStreamReader(ln net.Listener, f *os.File) *streamReader {
	return &streamReader{ln: ln, f: f}
}

func (s *streamReader) run() error {
	defer s.f.Close()
	conn, err := s.ln.Accept()
	_ = s.ln.Close() // one connection only: plain precopy has no extra channels
	if err != nil {
		return fmt.Errorf("accept migration connection: %w", err)
	}
	s.mu.Lock()
	if s.aborted {
		s.mu.Unlock()
		_ = conn.Close()
		return errors.New("stream reader aborted")
	}
	s.conn = conn
	s.mu.Unlock()
	defer conn.Close()
	w := bufio.NewWriterSize(s.f, 1<<20)
	n, err := io.Copy(w, conn)
	s.n = n
	if err != nil {
		return fmt.Errorf("read migration stream: %w", err)
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write stream file: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("write stream file: %w", err)
	}
	return nil
}

func (s *streamReader) abort() {
	s.mu.Lock()
	s.aborted = true
	if s.conn != nil {
		_ = s.conn.Close()
	}
	s.mu.Unlock()
	_ = s.ln.Close()
}

// warmupBeats is how many heartbeats CaptureStream lets the workload run after
// "DWCP ready", so the dirtiers have rewritten part of their regions.
const warmupBeats = 5

// CaptureStream boots a guest for cfg, lets its workload run for a few seconds of
// guest time after "DWCP ready", captures one single-pass stream into out and
// shuts the guest down.
func CaptureStream(ctx context.Context, cfg Config, out string) (CaptureResult, error) {
	vm, err := Start(ctx, cfg)
	if err != nil {
		return CaptureResult{}, err
	}
	defer vm.Close()
	if _, err := vm.WaitReady(ctx); err != nil {
		return CaptureResult{}, fmt.Errorf("capture stream: %w", err)
	}
	hb, err := vm.Heartbeat()
	if err != nil {
		return CaptureResult{}, fmt.Errorf("capture stream: %w", err)
	}
	if _, err := vm.WaitHeartbeat(ctx, hb.N+warmupBeats); err != nil {
		return CaptureResult{}, fmt.Errorf("capture stream: %w", err)
	}
	return vm.Capture(ctx, out, CaptureOptions{KeepPaused: true})
}
