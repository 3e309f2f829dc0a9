package qemudriver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// fixtureReturn reads testdata/qmp/NAME and returns its "return" member.
func fixtureReturn(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "qmp", name))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r.Return
}

func TestDecodeStatusFixtures(t *testing.T) {
	ms := time.Millisecond
	cases := []struct {
		file string
		want hypervisor.Status
	}{
		{"qm-none.json", hypervisor.Status{State: "none"}},
		{"qm-dst-none.json", hypervisor.Status{State: "none"}},
		// After migrate-incoming QEMU reports only where it listens.
		{"qm-dst-setup.json", hypervisor.Status{State: "none"}},
		{"qm-dst-completed.json", hypervisor.Status{State: "completed"}},
		{"qm-cancelled.json", hypervisor.Status{State: "cancelled"}},
		{"qm-failed.json", hypervisor.Status{State: "failed", Error: "Unable to write to socket: Bad file descriptor"}},
		{"qm-active-1.json", hypervisor.Status{
			State: "active", TotalTime: 706 * ms, ExpectedDowntime: 100 * ms, SetupTime: 1 * ms,
			TransferredBytes: 6330460, RemainingBytes: 144334848, TotalBytes: 151592960,
			DuplicatePages: 229, NormalPages: 1542, DirtySyncCount: 1, Mbps: 120.61379640718563,
		}},
		{"qm-cancelling.json", hypervisor.Status{
			State: "cancelling", TotalTime: 2731 * ms, ExpectedDowntime: 300 * ms, SetupTime: 1 * ms,
			TransferredBytes: 260628, RemainingBytes: 150392832, TotalBytes: 151592960,
			DuplicatePages: 229, NormalPages: 63, DirtySyncCount: 1,
		}},
		{"qm-completed.json", hypervisor.Status{
			State: "completed", TotalTime: 4343 * ms, Downtime: 20 * ms, SetupTime: 1 * ms,
			TransferredBytes: 97586033, TotalBytes: 151592960,
			DuplicatePages: 15131, NormalPages: 23745, DirtySyncCount: 4, Mbps: 180.03631506218332,
		}},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			got, err := decodeStatus(fixtureReturn(t, c.file))
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("decodeStatus:\n got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestDecodeStatusFields(t *testing.T) {
	// Fields 7.2's idle fixtures leave at zero.
	raw := `{"status":"active","cpu-throttle-percentage":40,"ram":{"dirty-pages-rate":1234}}`
	got, err := decodeStatus([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	if got.CPUThrottlePercent != 40 || got.DirtyPagesRate != 1234 {
		t.Errorf("got %+v", got)
	}
}

func TestDecodeStatusRejects(t *testing.T) {
	for _, raw := range []string{
		``, `[]`, `{"status":5}`, `{"total-time":-1}`, `{"downtime":9223372036854775807}`,
		`{"cpu-throttle-percentage":101}`, `{"ram":{"transferred":-5}}`, `{"ram":{"mbps":-1}}`,
		`{"ram":{"normal":1e400}}`, `{"ram":{"normal":1.5}}`,
	} {
		_, err := decodeStatus([]byte(raw))
		if err == nil {
			t.Errorf("decodeStatus(%q) succeeded", raw)
			continue
		}
		if !errors.Is(err, sdk.ErrCorruptInput) {
			t.Errorf("decodeStatus(%q) = %v; want it to wrap sdk.ErrCorruptInput", raw, err)
		}
	}
}

// encodeStatus writes s back as query-migrate would, for round trips.
func encodeStatus(s hypervisor.Status) []byte {
	ms := func(d time.Duration) int64 { return int64(d / time.Millisecond) }
	m := map[string]any{
		"status": s.State, "total-time": ms(s.TotalTime), "downtime": ms(s.Downtime),
		"expected-downtime": ms(s.ExpectedDowntime), "setup-time": ms(s.SetupTime),
		"cpu-throttle-percentage": s.CPUThrottlePercent, "error-desc": s.Error,
		"ram": map[string]any{
			"transferred": s.TransferredBytes, "remaining": s.RemainingBytes, "total": s.TotalBytes,
			"duplicate": s.DuplicatePages, "normal": s.NormalPages, "dirty-pages-rate": s.DirtyPagesRate,
			"dirty-sync-count": s.DirtySyncCount, "mbps": s.Mbps,
		},
	}
	b, _ := json.Marshal(m)
	return b
}

func FuzzDecodeStatus(f *testing.F) {
	entries, _ := filepath.Glob(filepath.Join("testdata", "qmp", "qm-*.json"))
	for _, e := range entries {
		f.Add(fixtureReturn(f, filepath.Base(e)))
	}
	f.Add([]byte(`{"status":"active","ram":{"transferred":18446744073709551615}}`))
	f.Add([]byte(`{"status":"x","total-time":1e3}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		st, err := decodeStatus(raw)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) {
				t.Fatalf("error %v does not wrap sdk.ErrCorruptInput", err)
			}
			return
		}
		if st.State == "" {
			t.Fatal("decoded status has no state")
		}
		// What decodes must survive a round trip unchanged (durations are
		// whole milliseconds by construction).
		again, err := decodeStatus(encodeStatus(st))
		if err != nil {
			t.Fatalf("re-decoding %+v: %v", st, err)
		}
		if again != st {
			t.Fatalf("round trip changed the status:\n%+v\n%+v", st, again)
		}
	})
}

func readEventLines(t testing.TB) [][]byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "qmp", "events-7.2.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, bytes.Clone(sc.Bytes()))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return lines
}

// eventFromLine decodes a line as go-qemu's reader does, then as the
// driver does.
func eventFromLine(line []byte) (migEvent, bool, error) {
	var e qmp.Event
	if err := json.Unmarshal(line, &e); err != nil || e.Event == "" {
		return migEvent{}, false, nil
	}
	return decodeEvent(e)
}

func TestDecodeEventFixtures(t *testing.T) {
	var got []string
	for _, line := range readEventLines(t) {
		me, ok, err := eventFromLine(line)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !ok {
			continue
		}
		if me.Time.Year() < 2020 {
			t.Errorf("%s: time %v not taken from QEMU's timestamp", line, me.Time)
		}
		switch me.Type {
		case hypervisor.EventStatus:
			got = append(got, me.Status)
		case hypervisor.EventPass:
			got = append(got, fmt.Sprintf("pass%d", me.Pass))
		case hypervisor.EventStopped:
			got = append(got, "STOP")
		}
	}
	// The completed run of the capture: setup, pass 1, active, passes
	// 2-3, the VM's stop, pass 4 (during the stop), completed.
	want := []string{"setup", "pass1", "active", "cancelling", "cancelled",
		"setup", "pass1", "active", "failed",
		"setup", "setup", "pass1", "active", "pass2", "pass3", "STOP", "pass4", "completed",
		"active", "completed"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events:\n got %v\nwant %v", got, want)
	}
	me, _, _ := eventFromLine(readEventLines(t)[0])
	if want := time.Unix(1795641857, 317269000); !me.Time.Equal(want) {
		t.Errorf("first event time %v, want %v", me.Time, want)
	}
}

func TestDecodeEventRejects(t *testing.T) {
	for _, line := range []string{
		`{"event":"MIGRATION","data":{}}`,
		`{"event":"MIGRATION","data":{"status":7}}`,
		`{"event":"MIGRATION","data":{"status":""}}`,
		`{"event":"MIGRATION_PASS","data":{"pass":-1}}`,
		`{"event":"MIGRATION_PASS","data":{"pass":1.5}}`,
		`{"event":"MIGRATION_PASS","data":{"pass":"2"}}`,
		`{"event":"MIGRATION_PASS"}`,
	} {
		if _, ok, err := eventFromLine([]byte(line)); err == nil || ok || !errors.Is(err, sdk.ErrCorruptInput) {
			t.Errorf("%s: ok=%v err=%v; want an ErrCorruptInput", line, ok, err)
		}
	}
	if me, ok, err := eventFromLine([]byte(`{"event":"STOP","timestamp":{"seconds":-1}}`)); !ok || err != nil || me.Type != hypervisor.EventStopped || time.Since(me.Time) > time.Minute {
		t.Errorf("STOP without a clock: %+v ok=%v err=%v; want a stop at the local time", me, ok, err)
	}
	if _, ok, err := eventFromLine([]byte(`{"event":"RESUME","timestamp":{"seconds":1}}`)); ok || err != nil {
		t.Errorf("RESUME: ok=%v err=%v; want ignored", ok, err)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	for _, line := range readEventLines(f) {
		f.Add(line)
	}
	f.Add([]byte(`{"event":"MIGRATION_PASS","data":{"pass":9007199254740993}}`))
	f.Add([]byte(`{"event":"MIGRATION","data":{"status":"x"},"timestamp":{"seconds":-1,"microseconds":-1}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		me, ok, err := eventFromLine(line)
		if err != nil {
			if !errors.Is(err, sdk.ErrCorruptInput) {
				t.Fatalf("error %v does not wrap sdk.ErrCorruptInput", err)
			}
			return
		}
		if !ok {
			return
		}
		if me.Time.IsZero() {
			t.Fatal("event without a time")
		}
		if me.Type == hypervisor.EventStatus && me.Status == "" {
			t.Fatal("status event without a status")
		}
	})
}

func TestClassifyLine(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "qmp", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if k, e := classifyLine(read("err-nocmd.json")); k != lineReply || e == nil || e.Class != "CommandNotFound" {
		t.Errorf("err-nocmd: kind=%v err=%+v", k, e)
	}
	if k, e := classifyLine(read("err-migrate-badbw.json")); k != lineReply || e == nil || e.Class != "GenericError" ||
		e.Desc != "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms" {
		t.Errorf("err-migrate-badbw: kind=%v err=%+v", k, e)
	}
	if k, e := classifyLine(read("qm-completed.json")); k != lineReply || e != nil {
		t.Errorf("a return: kind=%v err=%+v", k, e)
	}
	if k, e := classifyLine(readEventLines(t)[0]); k != lineEvent || e != nil {
		t.Errorf("an event: kind=%v err=%+v", k, e)
	}
	// What go-qemu's reader drops must not be waited on as a reply.
	for _, junk := range []string{"", "\r\n", "[1]", "{", `{"event":5}`, `{"data":5}`} {
		if k, e := classifyLine([]byte(junk)); k != lineJunk || e != nil {
			t.Errorf("%q: kind=%v err=%+v", junk, k, e)
		}
	}
	if k, e := classifyLine([]byte(`{"error":5}`)); k != lineReply || e != nil {
		t.Errorf("odd error member: kind=%v err=%+v", k, e)
	}
	qe := &QMPError{Command: "x", Class: "CommandNotFound", Desc: "gone"}
	if !errors.Is(qe, sdk.ErrUnsupported) {
		t.Error("CommandNotFound does not map to sdk.ErrUnsupported")
	}
	if errors.Is(&QMPError{Class: "GenericError"}, sdk.ErrUnsupported) {
		t.Error("GenericError maps to sdk.ErrUnsupported")
	}
}

func FuzzClassifyLine(f *testing.F) {
	entries, _ := filepath.Glob(filepath.Join("testdata", "qmp", "*.json"))
	for _, e := range entries {
		b, err := os.ReadFile(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		kind, e := classifyLine(line)
		if kind != lineReply && e != nil {
			t.Fatal("an error body on a line that is not a reply")
		}
		// The relay waits after exactly the lines go-qemu hands to Run.
		var ev qmp.Event
		goqemuReply := json.Unmarshal(line, &ev) == nil && ev.Event == ""
		if goqemuReply != (kind == lineReply) {
			t.Fatalf("kind %v, but go-qemu reply=%v", kind, goqemuReply)
		}
	})
}
