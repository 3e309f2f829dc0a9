package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The daemon's side of dwcp status: identity, sessions in progress with
// their latest line, gone once they end; and the client's word for a
// daemon too old to know the request.
func TestStatusOverTheControlSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), controlSocketName)
	cs, err := listenControl(path, nil, nil, func(string, ...any) {})
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now().Add(-time.Minute)
	cs.activity = newActivity(daemonStatus{Version: "v-test", Name: "hostb", Listen: "127.0.0.1:4650", Started: started})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cs.serve(ctx)
	defer cs.Close()

	st, err := queryStatus(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "v-test" || st.Name != "hostb" || st.Listen != "127.0.0.1:4650" || !st.Started.Equal(started) || len(st.Sessions) != 0 {
		t.Fatalf("idle status %+v", st)
	}

	noteOut, endOut := cs.activity.begin(sessionStatus{Direction: "out", VM: "/run/vm1.qmp", Peer: "hostc:4650"})
	noteIn, endIn := cs.activity.begin(sessionStatus{Direction: "in", Peer: "hosta"})
	w := noteWriter{w: &strings.Builder{}, note: noteOut}
	w.Write([]byte("pass 1, QEMU active: 10 MiB sent\n\r\x1b[Kpass 2, QEMU active: 20 MiB sent\n"))
	noteIn("migration m1 from hosta: stream started")
	noteIn("   \n") // blank lines do not replace the latest
	st, err = queryStatus(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Sessions) != 2 {
		t.Fatalf("status with two sessions: %+v", st)
	}
	out, in := st.Sessions[0], st.Sessions[1]
	if out.Direction != "out" || out.VM != "/run/vm1.qmp" || out.Peer != "hostc:4650" || out.Latest != "pass 2, QEMU active: 20 MiB sent" {
		t.Errorf("outgoing session %+v", out)
	}
	if in.Direction != "in" || in.Peer != "hosta" || in.Latest != "migration m1 from hosta: stream started" {
		t.Errorf("incoming session %+v", in)
	}
	endOut()
	endIn()
	if st, err = queryStatus(ctx, path); err != nil || len(st.Sessions) != 0 {
		t.Fatalf("after both ended: %+v, %v", st, err)
	}

	// A daemon from before dwcp status answers as to a bad migrate request.
	old := filepath.Join(t.TempDir(), "old.sock")
	ln, err := net.Listen("unix", old)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		bufio.NewReader(c).ReadString('\n')
		json.NewEncoder(c).Encode(controlMessage{Error: "control request: " + errOldDaemon + ": <nil>"})
	}()
	if _, err := queryStatus(ctx, old); err == nil || !strings.Contains(err.Error(), "older than dwcp status") {
		t.Errorf("old daemon: %v", err)
	}
	if _, err := queryStatus(ctx, filepath.Join(t.TempDir(), "none.sock")); err == nil || !strings.Contains(err.Error(), "no dwcp serve answers") {
		t.Errorf("no daemon: %v", err)
	}
}

// dwcp status against a real dwcp serve.
func TestStatusCommand(t *testing.T) {
	bin, plugins := buildAll(t)
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	makeCerts(t, bin, certs)
	sock := filepath.Join(dir, "state", controlSocketName)
	addr := startDaemon(t, bin, nil, []string{"--listen", "127.0.0.1:0", "--certs", certs, "--name", "hostb",
		"--out-dir", filepath.Join(dir, "out"), "--plugin-dir", plugins, "--state-dir", filepath.Join(dir, "state")},
		`listening on (\S+)`)[0]
	out := run(t, bin, "status", "--state-dir", filepath.Join(dir, "state"))
	if !strings.Contains(out, "as hostb, listening on "+addr) || !strings.Contains(out, "no sessions in progress") {
		t.Errorf("dwcp status:\n%s", out)
	}
	var st daemonStatus
	if err := json.Unmarshal([]byte(run(t, bin, "status", "--control", sock, "--json")), &st); err != nil || st.Name != "hostb" || st.Listen != addr || st.Sessions == nil {
		t.Errorf("dwcp status --json: %+v, %v", st, err)
	}
}
