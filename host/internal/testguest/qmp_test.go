package testguest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodeQMP(t *testing.T) {
	cases := []struct {
		line string
		kind qmpKind
		id   uint64
		bad  bool
	}{
		{line: `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`, kind: qmpGreeting},
		{line: `{"return": {}, "id": 7}`, kind: qmpReply, id: 7},
		{line: `{"return": [], "id": 18446744073709551615}`, kind: qmpReply, id: 1<<64 - 1},
		{line: `{"error": {"class": "GenericError", "desc": "no"}, "id": 2}`, kind: qmpReply, id: 2},
		{line: `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}`, kind: qmpEvent},
		{line: `{"return": {}}`, bad: true},                   // reply without id
		{line: `{"return": {}, "id": "x"}`, bad: true},        // id we never send
		{line: `{"return": {}, "id": -1}`, bad: true},         // negative id
		{line: `{"something": 1}`, bad: true},                 // unknown message
		{line: `{"return": {}, "id": 1} {"x": 1}`, bad: true}, // two objects
		{line: `[1, 2]`, bad: true},
		{line: ``, bad: true},
	}
	for _, c := range cases {
		_, kind, id, err := decodeQMP([]byte(c.line))
		if c.bad {
			if err == nil {
				t.Errorf("decodeQMP(%s) accepted, want error", c.line)
			}
			continue
		}
		if err != nil || kind != c.kind || id != c.id {
			t.Errorf("decodeQMP(%s) = kind %d id %d err %v, want kind %d id %d", c.line, kind, id, err, c.kind, c.id)
		}
	}
}

func FuzzDecodeQMP(f *testing.F) {
	f.Add([]byte(`{"QMP": {"version": {}}}`))
	f.Add([]byte(`{"return": {"status": "running"}, "id": 3}`))
	f.Add([]byte(`{"error": {"class": "GenericError", "desc": "x"}, "id": 1}`))
	f.Add([]byte(`{"event": "MIGRATION", "data": {"status": "completed"}}`))
	f.Add([]byte(`{"return": 1, "id": 1.5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, kind, _, err := decodeQMP(b)
		if err != nil {
			return
		}
		switch kind {
		case qmpGreeting:
			if m.Greeting == nil {
				t.Fatal("greeting without QMP member")
			}
		case qmpReply:
			if m.Return == nil && m.Error == nil {
				t.Fatal("reply without return or error")
			}
		case qmpEvent:
			if m.Event == "" {
				t.Fatal("event without name")
			}
		default:
			t.Fatalf("accepted with kind %d", kind)
		}
	})
}

func TestReadQMPLine(t *testing.T) {
	long := strings.Repeat("x", maxQMPLine+1) + "\n"
	if _, err := readQMPLine(bufio.NewReaderSize(strings.NewReader(long), 4096)); err == nil {
		t.Error("line over maxQMPLine accepted")
	}
	r := bufio.NewReaderSize(strings.NewReader(strings.Repeat("y", 10000)+"\n"+`{"a"`), 16)
	line, err := readQMPLine(r)
	if err != nil || len(line) != 10001 {
		t.Errorf("line across buffer refills: %d bytes, %v", len(line), err)
	}
	if _, err := readQMPLine(r); err == nil || !strings.Contains(err.Error(), "unexpected EOF") {
		t.Errorf("unterminated last line: %v, want unexpected EOF", err)
	}
}

// qmpPeer is a scripted QMP server on a real unix socket: it sends greeting, then
// answers each command line with respond's lines. It tests the client's handling of
// orderings and failures that a healthy QEMU does not produce on demand.
type qmpPeer struct {
	path string
	ln   net.Listener
	done chan struct{}
}

func startPeer(t *testing.T, greeting string, respond func(cmd string, id json.RawMessage) []string) *qmpPeer {
	t.Helper()
	p := &qmpPeer{path: filepath.Join(t.TempDir(), "q.sock"), done: make(chan struct{})}
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.ln = ln
	go func() {
		defer close(p.done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(greeting + "\n")); err != nil {
			return
		}
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			var req struct {
				Execute string          `json:"execute"`
				ID      json.RawMessage `json:"id"`
			}
			if json.Unmarshal(sc.Bytes(), &req) != nil {
				return
			}
			lines := respond(req.Execute, req.ID)
			if lines == nil {
				return // hang up
			}
			for _, l := range lines {
				if _, err := conn.Write([]byte(l + "\n")); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-p.done
	})
	return p
}

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}`

func alwaysAlive() error { return nil }

func TestQMPClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var abandoned json.RawMessage
	p := startPeer(t, greeting, func(cmd string, id json.RawMessage) []string {
		switch cmd {
		case "qmp_capabilities":
			return []string{`{"return": {}, "id": ` + string(id) + `}`}
		case "query-status":
			// An event and a stray reply come first; the client must skip both.
			return []string{
				`{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "RESUME"}`,
				`{"return": {"status": "paused"}, "id": 999999}`,
				`{"return": {"status": "running", "running": true}, "id": ` + string(id) + `}`,
			}
		case "slow":
			abandoned = id
			return []string{} // no reply: the caller times out
		case "after-slow":
			// The late reply to the abandoned command arrives first.
			return []string{
				`{"return": {"late": true}, "id": ` + string(abandoned) + `}`,
				`{"return": {"ok": 1}, "id": ` + string(id) + `}`,
			}
		case "bad":
			return []string{`{"error": {"class": "GenericError", "desc": "Invalid parameter"}, "id": ` + string(id) + `}`}
		default:
			return nil
		}
	})
	c, err := dialQMP(ctx, p.path, alwaysAlive)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	raw, err := c.Run(ctx, "query-status", nil)
	if err != nil {
		t.Fatal(err)
	}
	var st struct{ Status string }
	if err := json.Unmarshal(raw, &st); err != nil || st.Status != "running" {
		t.Errorf("query-status = %s (%v), want running", raw, err)
	}

	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err = c.Run(short, "slow", nil)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("unanswered command: %v, want deadline exceeded", err)
	}
	raw, err = c.Run(ctx, "after-slow", nil)
	if err != nil || string(raw) != `{"ok": 1}` {
		t.Errorf("command after an abandoned one = %s, %v; want its own reply", raw, err)
	}

	_, err = c.Run(ctx, "bad", map[string]int{"x": 1})
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Command != "bad" {
		t.Errorf("error reply = %v, want *QMPError GenericError for command bad", err)
	}

	// The peer hangs up on an unknown command: this and later commands fail.
	if _, err := c.Run(ctx, "hangup", nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("command on hang-up: %v, want ErrQMPClosed", err)
	}
	if _, err := c.Run(ctx, "query-status", nil); !errors.Is(err, ErrQMPClosed) {
		t.Errorf("command after hang-up: %v, want ErrQMPClosed", err)
	}
}

func TestDialQMPBadGreeting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, g := range []string{`{"return": {}, "id": 1}`, `not json`} {
		p := startPeer(t, g, func(string, json.RawMessage) []string { return nil })
		if c, err := dialQMP(ctx, p.path, alwaysAlive); err == nil {
			_ = c.Close()
			t.Errorf("greeting %q accepted", g)
		}
	}
}

func TestDialQMPDeadProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dead := func() error { return ErrExited }
	_, err := dialQMP(ctx, filepath.Join(t.TempDir(), "never.sock"), dead)
	if !errors.Is(err, ErrExited) {
		t.Errorf("dial with QEMU gone: %v, want ErrExited", err)
	}
}
