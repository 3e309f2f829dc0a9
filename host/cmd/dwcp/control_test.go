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
	"testing"
	"time"

	"github.com/dwcp/dwcp/host/migrate"
	"github.com/dwcp/dwcp/host/modes"
)

// The control socket's protocol, against a real daemon-side server: bad
// requests get a clear error and never reach a migration; a second
// daemon cannot take the socket; a stale socket file is replaced.
func TestControlSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", controlSocketName)
	var mu sync.Mutex
	var logged []string
	cs, err := listenControl(path, nil, nil, func(f string, a ...any) { mu.Lock(); logged = append(logged, f); mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs.serve(ctx)
	defer cs.Close()

	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi.Mode(), err)
	}
	if _, ok := daemonAvailable(path); !ok {
		t.Fatal("a running daemon is not seen")
	}
	if _, err := listenControl(path, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "another dwcp serve") {
		t.Fatalf("second daemon on the same socket: %v", err)
	}

	raw := func(line string) string {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		reply, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("no reply to %q: %v", line, err)
		}
		return reply
	}
	for line, want := range map[string]string{
		"not json\n":            "not a migrate request",
		"{}\n":                  "not a migrate request",
		`{"migrate":{}}` + "\n": "no QMP socket",
		`{"migrate":{"qmp":"/x","to":"h:1","converge":"auto-converge","downtime":1000000,"max_time":1000000000,"streams":-1}}` + "\n": "--streams -1",
		strings.Repeat("x", maxControlRequest+10): "at most",
	} {
		if got := raw(line); !strings.Contains(got, `"error"`) || !strings.Contains(got, want) {
			t.Errorf("request %.40q: reply %q, want an error with %q", line, got, want)
		}
	}

	// The client side reports the daemon's refusal as the command's error.
	_, err = delegateMigration(ctx, path, migrateRequest{To: "h:1"}, os.Stderr)
	if err == nil || !strings.Contains(err.Error(), "no QMP socket") {
		t.Fatalf("delegated bad request: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 0 {
		t.Errorf("refused requests reached the migration: %q", logged)
	}
}

func TestStaleControlSocketIsReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), controlSocketName)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// Close without removing the file: a crashed daemon's leftover.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, ok := daemonAvailable(path); ok {
		t.Fatal("a dead socket file counts as a daemon")
	}
	cs, err := listenControl(path, nil, nil, func(string, ...any) {})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	cs.Close()
	if _, ok := daemonAvailable(filepath.Join(t.TempDir(), "none.sock")); ok {
		t.Fatal("a missing socket counts as a daemon")
	}
}

func TestRateHigh(t *testing.T) {
	var r rateHigh
	t0 := time.Unix(1000, 0)
	if got := r.observe(t0, 0); got != 0 {
		t.Fatalf("first sample: %g", got)
	}
	if got := r.observe(t0.Add(500*time.Millisecond), 1e6); got != 0 {
		t.Fatalf("under a second: %g, want nothing yet", got)
	}
	if got := r.observe(t0.Add(2*time.Second), 20e6); got != 10e6 {
		t.Fatalf("20 MB in 2 s: %g, want 10e6", got)
	}
	if got := r.observe(t0.Add(4*time.Second), 22e6); got != 10e6 {
		t.Fatalf("a slower interval lowered the high to %g", got)
	}
	if got := r.observe(t0.Add(5*time.Second), 5e6); got != 10e6 {
		t.Fatalf("counters that went back: %g", got)
	}
}

func TestMigrationWindow(t *testing.T) {
	for _, c := range []struct {
		rate    float64 // bytes/s
		carried float64 // bytes/s
		rtt     time.Duration
		want    int64
	}{
		{12.5e6, 0, 60 * time.Millisecond, 3_000_000},     // 100 Mbit/s internet: 4 BDP
		{500e6, 0, 500 * time.Microsecond, 2 << 20},       // datacenter: the floor
		{125e6, 0, 200 * time.Millisecond, 16 << 20},      // long fat path: the transport's window
		{0, 0, 0, 2 << 20},                                // nothing known yet
		{1.7e6, 12.5e6, 60 * time.Millisecond, 3_000_000}, // the estimate fell: what was carried holds the window
	} {
		if got := migrationWindow(modes.Path{Bandwidth: c.rate, RTT: c.rtt}, c.carried); got != c.want {
			t.Errorf("rate %g RTT %s: window %d, want %d", c.rate, c.rtt, got, c.want)
		}
	}
}

// --suspend goes to the daemon under migrate_strict: this daemon reads it
// as a migrate request, and a daemon from before the key (which would
// ignore "suspend" and run the VM on the destination) refuses it, which
// the client reports as such.
func TestSuspendNeedsADaemonThatKnowsIt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state", controlSocketName)
	cs, err := listenControl(path, nil, nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cs.serve(ctx)
	defer cs.Close()
	// Reaches validation: the request was understood.
	if _, err := delegateMigration(ctx, path, migrateRequest{To: "h:1", Suspend: true}, io.Discard); err == nil || !strings.Contains(err.Error(), "no QMP socket") {
		t.Fatalf("suspend request to a current daemon: %v", err)
	}

	// The control server as it was before migrate_strict: it knows only
	// the "migrate" key.
	old, done := fakeDaemon(t, func(line []byte, _ *bufio.Reader, enc *json.Encoder) {
		var req struct {
			Migrate *migrateRequest `json:"migrate,omitempty"`
		}
		if err := json.Unmarshal(line, &req); err != nil || req.Migrate == nil {
			_ = enc.Encode(controlMessage{Error: fmt.Sprintf("control request: not a migrate request: %v", err)})
			return
		}
		_ = enc.Encode(controlMessage{Error: "this old daemon would have run the migration, suspend ignored"})
	})
	_, err = delegateMigration(ctx, old, migrateRequest{QMP: "/x", To: "h:1", Suspend: true}, io.Discard)
	<-done
	if err == nil || !strings.Contains(err.Error(), "older than --suspend") {
		t.Fatalf("suspend request to an old daemon: %v", err)
	}
}

// An interrupted `dwcp migrate` that runs in the daemon returns only once
// the daemon has reported the migration's end (the cancel on the source
// is done, so an immediate retry finds the VM free), and says what the
// daemon said. A daemon that never answers is given up on after
// cancelGrace (not waited for here).
func TestInterruptWaitsForTheDaemonsCancel(t *testing.T) {
	for _, c := range []struct {
		name      string
		daemonErr error
		want      string
	}{
		{"cancelled", errors.New("migrate /q to h:1: context canceled"), "interrupted: the migration is cancelled on this host"},
		{"cancel failed", fmt.Errorf("migrate /q to h:1: context canceled; and %w: qmp gone", migrate.ErrCancelFailed), "interrupted: migrate /q to h:1: context canceled; and cancelling on the source failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			const cancelTakes = 300 * time.Millisecond
			var sawHangUp time.Time
			sock, done := fakeDaemon(t, func(_ []byte, br *bufio.Reader, enc *json.Encoder) {
				_ = enc.Encode(controlMessage{Output: "pass 1\n"})
				// The client's hang-up (EOF) is the cancel; cancelling
				// on the source takes a while.
				_, _ = io.Copy(io.Discard, br)
				sawHangUp = time.Now()
				time.Sleep(cancelTakes)
				_ = enc.Encode(failureMessage(c.daemonErr))
			})
			// Ctrl-C once the migration is under way.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := delegateMigration(ctx, sock, migrateRequest{QMP: "/q", To: "h:1"}, cancelOnOutput{"pass 1", cancel})
			returned := time.Now()
			<-done
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("interrupted migration: %v, want %q", err, c.want)
			}
			if sawHangUp.IsZero() || returned.Sub(sawHangUp) < cancelTakes {
				t.Fatalf("returned %v after the daemon saw the hang-up, before its cancel (%v) was done", returned.Sub(sawHangUp), cancelTakes)
			}
		})
	}
}

// fakeDaemon listens on a unix socket in a temporary directory and answers
// one control connection with serve, given the request line it read, the
// rest of the connection and an encoder for its messages. done closes once
// serve has returned and the connection is closed.
func fakeDaemon(t *testing.T, serve func(line []byte, rest *bufio.Reader, enc *json.Encoder)) (sock string, done <-chan struct{}) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "daemon.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		line, err := br.ReadBytes('\n')
		if err != nil {
			return
		}
		serve(line, br, json.NewEncoder(c))
	}()
	t.Cleanup(func() { ln.Close(); <-ch })
	return sock, ch
}

// cancelOnOutput cancels when the output it is written contains want.
type cancelOnOutput struct {
	want   string
	cancel context.CancelFunc
}

func (w cancelOnOutput) Write(p []byte) (int, error) {
	if strings.Contains(string(p), w.want) {
		w.cancel()
	}
	return len(p), nil
}
