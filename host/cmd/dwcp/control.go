package main

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
	"strings"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/agent"
	"github.com/dwcp/dwcp/host/metrics"
	"github.com/dwcp/dwcp/host/migrate"
	"github.com/dwcp/dwcp/host/pagestore"
)

// The control socket lets `dwcp migrate` hand a migration to the host's
// running `dwcp serve`: its plugins are up and its path measurements warm,
// so the migration starts a second or more sooner than in a fresh process.
// It is a unix socket (mode 0600 in a 0700 directory: only the daemon's
// user may ask it to migrate VMs) carrying newline-delimited JSON: one
// controlRequest from the client, then controlMessages from the daemon —
// output to show, and finally a result or an error. The client closing the
// connection cancels the migration (the VM keeps running on the source).

const controlSocketName = "control.sock"

// maxControlRequest bounds a request line.
const maxControlRequest = 64 << 10

type controlRequest struct {
	Migrate *migrateRequest `json:"migrate,omitempty"`
	// MigrateStrict is a migrate request that sets a field a daemon
	// without it would ignore to a different effect (suspend: such a
	// daemon would run the VM on the destination). A daemon that does not
	// know this key refuses the request ("not a migrate request") instead.
	MigrateStrict *migrateRequest `json:"migrate_strict,omitempty"`
	// Status asks for the daemon's status (`dwcp status`); the answer is
	// one controlMessage with Status set.
	Status *struct{} `json:"status,omitempty"`
}

// errOldDaemon is how a daemon without migrate_strict answers it.
const errOldDaemon = "not a migrate request"

// request is the migrate request of whichever key carries it.
func (r controlRequest) request() *migrateRequest {
	if r.MigrateStrict != nil {
		return r.MigrateStrict
	}
	return r.Migrate
}

type controlMessage struct {
	Output string          `json:"output,omitempty"`
	Result *migrateSummary `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
	// CancelFailed: with Error, the migration could not be cancelled on
	// the source either (migrate.ErrCancelFailed): the VM's state there
	// is unknown.
	CancelFailed bool `json:"cancel_failed,omitempty"`
	// Status answers a status request.
	Status *daemonStatus `json:"status,omitempty"`
}

// failureMessage is the daemon's report of a migration that failed.
func failureMessage(err error) controlMessage {
	return controlMessage{Error: err.Error(), CancelFailed: errors.Is(err, migrate.ErrCancelFailed)}
}

// controlSocketPath is the control socket in the host's state directory.
func controlSocketPath(stateDir string) string {
	if stateDir == "" {
		return ""
	}
	return filepath.Join(stateDir, controlSocketName)
}

// daemonAvailable tells whether a dwcp serve answers on path.
func daemonAvailable(path string) (string, bool) {
	if path == "" {
		return "", false
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return "", false
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return "", false
	}
	c.Close()
	return path, true
}

// cancelGrace bounds how long an interrupted `dwcp migrate` waits for the
// daemon to report that it cancelled the migration (the source side's own
// cancel is bounded by 30 s, see migrate.Source).
const cancelGrace = 90 * time.Second

// delegateMigration runs req in the daemon behind sock, copying its output
// to log. Cancelling ctx half-closes the connection, which cancels the
// migration in the daemon; the call then waits (up to cancelGrace) for
// the daemon's last word, so that when it returns the cancel is done and
// an immediate retry finds the VM free.
func delegateMigration(ctx context.Context, sock string, req migrateRequest, log io.Writer) (migrateSummary, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return migrateSummary{}, fmt.Errorf("control socket %s: %w", sock, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() {
		if uc, ok := conn.(*net.UnixConn); ok && uc.CloseWrite() == nil && uc.SetReadDeadline(time.Now().Add(cancelGrace)) == nil {
			return
		}
		conn.Close()
	})
	defer stop()
	creq := controlRequest{Migrate: &req}
	if req.Suspend {
		creq = controlRequest{MigrateStrict: &req}
	}
	if err := json.NewEncoder(conn).Encode(creq); err != nil {
		return migrateSummary{}, fmt.Errorf("control socket %s: send request: %w", sock, err)
	}
	dec := json.NewDecoder(bufio.NewReader(conn))
	for {
		var m controlMessage
		if err := dec.Decode(&m); err != nil {
			if ctx.Err() != nil {
				return migrateSummary{}, fmt.Errorf("interrupted, and the host's dwcp serve did not confirm the cancel within %v (%v): it cancels the migration when it can, see its log", cancelGrace, err)
			}
			return migrateSummary{}, fmt.Errorf("the host's dwcp serve went away during the migration (%v); it cancels the migration when it can, see its log", err)
		}
		switch {
		case m.Error != "" && ctx.Err() != nil:
			if m.CancelFailed {
				return migrateSummary{}, fmt.Errorf("interrupted: %s", m.Error)
			}
			return migrateSummary{}, fmt.Errorf("interrupted: the migration is cancelled on this host, the VM keeps running here (%s): %w", m.Error, ctx.Err())
		case m.Error != "" && creq.MigrateStrict != nil && strings.Contains(m.Error, errOldDaemon):
			return migrateSummary{}, fmt.Errorf("the host's dwcp serve is older than --suspend and refused the request (%s): restart it with this dwcp, or run with --local", m.Error)
		case m.Error != "":
			return migrateSummary{}, errors.New(m.Error)
		case m.Result != nil:
			out := *m.Result
			out.Setup.ViaDaemon = true
			return out, nil
		case m.Output != "":
			io.WriteString(log, m.Output)
		}
	}
}

// controlServer is the daemon's side.
type controlServer struct {
	ln    net.Listener
	agent *agent.Agent
	hist  *pagestore.Store // the daemon's page history, nil if none
	log   func(format string, args ...any)
	// metrics counts the migrations it runs (nil: none kept).
	metrics *metrics.Metrics
	// activity registers the migrations it runs and answers status
	// requests (nil: an empty status).
	activity *activity
	wg       sync.WaitGroup
}

// listenControl creates the control socket at path. A socket that still
// answers belongs to another daemon; one that does not is left over from
// a crash and is replaced.
func listenControl(path string, a *agent.Agent, hist *pagestore.Store, log func(string, ...any)) (*controlServer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if _, ok := daemonAvailable(path); ok {
		return nil, fmt.Errorf("control socket %s: another dwcp serve answers there", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return &controlServer{ln: ln, agent: a, hist: hist, log: log}, nil
}

// serve accepts requests until ctx ends or Close; every handler it starts
// is waited for by Close.
func (c *controlServer) serve(ctx context.Context) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			conn, err := c.ln.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				c.handle(ctx, conn)
			}()
		}
	}()
}

// Close stops accepting and waits for the migrations in progress (their
// contexts end with the daemon's).
func (c *controlServer) Close() {
	c.ln.Close()
	c.wg.Wait()
}

// controlWriter turns output into messages; it is safe for concurrent use
// (progress and events write from different goroutines).
type controlWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *controlWriter) send(m controlMessage) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(m)
}

func (w *controlWriter) Write(p []byte) (int, error) {
	if err := w.send(controlMessage{Output: string(p)}); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *controlServer) handle(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := &controlWriter{enc: json.NewEncoder(conn)}
	br := bufio.NewReader(io.LimitReader(conn, maxControlRequest))
	line, err := br.ReadBytes('\n')
	if err != nil {
		_ = out.send(controlMessage{Error: fmt.Sprintf("control request: %v (one JSON line of at most %d bytes)", err, maxControlRequest)})
		return
	}
	var creq controlRequest
	err = json.Unmarshal(line, &creq)
	if err == nil && creq.Status != nil && creq.request() == nil {
		st := c.activity.snapshot()
		_ = out.send(controlMessage{Status: &st})
		return
	}
	if err != nil || creq.request() == nil {
		_ = out.send(controlMessage{Error: fmt.Sprintf("control request: %s: %v", errOldDaemon, err)})
		return
	}
	req := creq
	req.Migrate = creq.request()
	if err := req.Migrate.validate(); err != nil {
		_ = out.send(controlMessage{Error: err.Error()})
		return
	}
	// The client hanging up cancels the migration: watch the connection
	// for its end (nothing more is expected from it).
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		_, _ = io.Copy(io.Discard, conn)
		cancel()
	}()
	defer watch.Wait()
	defer conn.Close() // ends the watcher once the handler is done
	r := *req.Migrate
	c.log("migration of %s to %s requested over the control socket", r.QMP, r.To)
	ended := c.metrics.Started(metrics.Out)
	note, done := c.activity.begin(sessionStatus{Direction: "out", VM: r.QMP, Peer: r.To})
	defer done()
	// The progress goes to the client, and its latest line to the status,
	// unless the client asked for none (--json): then to the status only.
	var progress io.Writer = out
	if r.Quiet {
		progress, r.Quiet = io.Discard, false
	}
	sum, err := runMigration(ctx, c.agent, c.hist, r, noteWriter{w: progress, note: note}, setupSteps{})
	ended(metrics.Session{Kind: metrics.Migration, Err: err, Duration: time.Duration(sum.TotalSeconds * float64(time.Second)),
		StreamBytes: sum.StreamBytes, WireBytes: sum.WireBytes, Downtime: time.Duration(sum.DowntimeMs * float64(time.Millisecond))})
	if err != nil {
		c.log("migration of %s to %s failed: %v", r.QMP, r.To, err)
		_ = out.send(failureMessage(err))
		return
	}
	c.log("migration of %s to %s complete: total %.2f s, downtime %.0f ms", r.QMP, r.To, sum.TotalSeconds, sum.DowntimeMs)
	_ = out.send(controlMessage{Result: &sum})
}
