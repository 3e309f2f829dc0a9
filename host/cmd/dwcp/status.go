package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// `dwcp status` asks the host's dwcp serve, over its control socket, what
// it is doing: who it is, where it listens, and every session in progress
// in either direction (the migrations it runs for `dwcp migrate`, the
// sessions it receives from peers) with the last thing each one reported.
// The request is one JSON line {"status":{}}; the answer one controlMessage
// whose Status is set.

// daemonStatus is the daemon's answer.
type daemonStatus struct {
	Version  string          `json:"version"`
	Name     string          `json:"name"`
	Listen   string          `json:"listen"`
	Started  time.Time       `json:"started"`
	Sessions []sessionStatus `json:"sessions"`
}

// sessionStatus is one session in progress.
type sessionStatus struct {
	// Direction is "out" (a migration this host runs for dwcp migrate)
	// or "in" (a session a peer opened).
	Direction string    `json:"direction"`
	VM        string    `json:"vm,omitempty"`   // out: the VM's QMP socket
	Peer      string    `json:"peer,omitempty"` // out: --to; in: the peer's certificate name
	Started   time.Time `json:"started"`
	// Latest is the last line the session reported (a pass, an event).
	Latest string `json:"latest,omitempty"`
}

// activity is the daemon's register of sessions in progress, for status.
// It is safe for concurrent use.
type activity struct {
	mu      sync.Mutex
	next    int
	running map[int]*sessionStatus
	self    daemonStatus
}

func newActivity(self daemonStatus) *activity {
	return &activity{running: map[int]*sessionStatus{}, self: self}
}

// begin registers a session; note records its latest line and end
// removes it. A nil *activity ignores every call.
func (a *activity) begin(s sessionStatus) (note func(string), end func()) {
	if a == nil {
		return func(string) {}, func() {}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id := a.next
	a.next++
	s.Started = time.Now()
	a.running[id] = &s
	note = func(line string) {
		if line = lastLine(line); line == "" {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if cur, ok := a.running[id]; ok {
			cur.Latest = line
		}
	}
	end = func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		delete(a.running, id)
	}
	return note, end
}

// snapshot is the status as of now, sessions oldest first (a nil
// *activity has none and no identity).
func (a *activity) snapshot() daemonStatus {
	if a == nil {
		return daemonStatus{Sessions: []sessionStatus{}}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.self
	st.Sessions = []sessionStatus{}
	for _, s := range a.running {
		st.Sessions = append(st.Sessions, *s)
	}
	sort.Slice(st.Sessions, func(i, j int) bool { return st.Sessions[i].Started.Before(st.Sessions[j].Started) })
	return st
}

// lastLine is the last non-empty line of s, trimmed and without terminal
// escape sequences (progress output on a terminal redraws its line with
// a carriage return and an erase-line sequence, and one write may carry
// several lines).
func lastLine(s string) string {
	s = ansiEscape.ReplaceAllString(s, "")
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return ""
}

// ansiEscape matches a terminal control sequence (CSI).
var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;?]*[ -/]*[@-~]")

// noteWriter passes writes on to w and notes their last line.
type noteWriter struct {
	w    io.Writer
	note func(string)
}

func (n noteWriter) Write(p []byte) (int, error) {
	n.note(string(p))
	return n.w.Write(p)
}

// queryStatus asks the daemon behind sock for its status.
func queryStatus(ctx context.Context, sock string) (daemonStatus, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return daemonStatus{}, fmt.Errorf("no dwcp serve answers on %s: %w", sock, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, `{"status":{}}`+"\n"); err != nil {
		return daemonStatus{}, fmt.Errorf("control socket %s: %w", sock, err)
	}
	var m controlMessage
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&m); err != nil {
		return daemonStatus{}, fmt.Errorf("control socket %s: read the status: %w", sock, err)
	}
	switch {
	case m.Error != "" && strings.Contains(m.Error, errOldDaemon):
		return daemonStatus{}, fmt.Errorf("the dwcp serve on %s is older than dwcp status (%s): restart it with this dwcp", sock, m.Error)
	case m.Error != "":
		return daemonStatus{}, errors.New(m.Error)
	case m.Status == nil:
		return daemonStatus{}, fmt.Errorf("control socket %s: the answer has no status", sock)
	}
	return *m.Status, nil
}

func newStatusCommand() *cobra.Command {
	var stateDir, control string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show what this host's dwcp serve is doing: its identity and the sessions in progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if control == "" {
				control = controlSocketPath(stateDir)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			st, err := queryStatus(ctx, control)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "dwcp serve %s as %s, listening on %s, up %s\n", st.Version, st.Name, st.Listen, time.Since(st.Started).Round(time.Second))
			if len(st.Sessions) == 0 {
				fmt.Fprintln(w, "no sessions in progress")
				return nil
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DIRECTION\tVM\tPEER\tRUNNING\tLATEST")
			for _, s := range st.Sessions {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Direction, dash(s.VM), dash(s.Peer), time.Since(s.Started).Round(100*time.Millisecond), s.Latest)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultStateDir(), "the daemon's state directory, which holds its control socket ($DWCP_STATE)")
	cmd.Flags().StringVar(&control, "control", "", "the daemon's control `SOCKET` (default: STATE_DIR/control.sock)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON")
	return cmd
}
