package qemudriver

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// Migration states QEMU reports (qapi MigrationStatus). Only the ones the
// driver branches on are named.
const (
	stateNone       = "none"
	stateSetup      = "setup"
	stateActive     = "active"
	stateCompleted  = "completed"
	stateFailed     = "failed"
	stateCancelling = "cancelling"
	stateCancelled  = "cancelled"
)

// finalState reports whether a migration in state s can change no more.
func finalState(s string) bool {
	return s == stateCompleted || s == stateFailed || s == stateCancelled
}

// QMPError is an error reply from QEMU: its class (GenericError,
// CommandNotFound, DeviceNotActive, ...) and its human-readable desc, both
// kept in the message so nothing QEMU said is lost on the way to the user.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Is maps the classes callers branch on to the sdk sentinels.
func (e *QMPError) Is(target error) bool {
	return e.Class == "CommandNotFound" && target == sdk.ErrUnsupported
}

// qmpErrorBody is the "error" member of a QMP reply.
type qmpErrorBody struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

// maxQMPLine is the longest line go-qemu's reader accepts (bufio.Scanner's
// default token size). A longer reply kills its reader, so the pipe cuts
// the connection instead and says why.
const maxQMPLine = 64 << 10

// lineKind is what go-qemu's reader makes of a line QEMU sent.
type lineKind int

const (
	lineJunk  lineKind = iota // not decodable: go-qemu drops it
	lineEvent                 // an asynchronous event
	lineReply                 // a command's reply: go-qemu hands it to Run
)

// classifyLine decodes a line exactly as go-qemu's reader does (into
// qmp.Event; no event name means a reply), and returns the error body of an
// error reply. It never fails: what it cannot read is junk.
func classifyLine(line []byte) (lineKind, *qmpErrorBody) {
	var e qmp.Event
	if err := json.Unmarshal(line, &e); err != nil {
		return lineJunk, nil
	}
	if e.Event != "" {
		return lineEvent, nil
	}
	var msg struct {
		Error *qmpErrorBody `json:"error"`
	}
	if err := json.Unmarshal(line, &msg); err != nil {
		return lineReply, nil
	}
	return lineReply, msg.Error
}

// queryMigrateReply is the part of QEMU's MigrationInfo the driver reads
// (field names as in QEMU 7.2 through 9.x). Numbers are signed because QEMU
// declares most of them as int; decodeStatus rejects negative values.
type queryMigrateReply struct {
	Status             string   `json:"status"`
	TotalTime          *int64   `json:"total-time"`
	Downtime           *int64   `json:"downtime"`
	ExpectedDowntime   *int64   `json:"expected-downtime"`
	SetupTime          *int64   `json:"setup-time"`
	CPUThrottlePercent *int64   `json:"cpu-throttle-percentage"`
	ErrorDesc          string   `json:"error-desc"`
	RAM                *ramInfo `json:"ram"`
}

type ramInfo struct {
	Transferred    int64   `json:"transferred"`
	Remaining      int64   `json:"remaining"`
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"`
	Normal         int64   `json:"normal"`
	DirtyPagesRate int64   `json:"dirty-pages-rate"`
	DirtySyncCount int64   `json:"dirty-sync-count"`
	Mbps           float64 `json:"mbps"`
}

// decodeStatus turns a query-migrate return value into a Status. An empty
// object is state "none": QEMU omits status before any migration.
func decodeStatus(raw []byte) (hypervisor.Status, error) {
	var r queryMigrateReply
	if err := json.Unmarshal(raw, &r); err != nil {
		return hypervisor.Status{}, fmt.Errorf("decode query-migrate reply: %w: %w", sdk.ErrCorruptInput, err)
	}
	st := hypervisor.Status{State: r.Status, Error: r.ErrorDesc}
	if st.State == "" {
		st.State = stateNone
	}
	var errs []error
	ms := func(name string, v *int64) time.Duration {
		if v == nil {
			return 0
		}
		if *v < 0 || *v > math.MaxInt64/int64(time.Millisecond) {
			errs = append(errs, fmt.Errorf("%s %d ms out of range", name, *v))
			return 0
		}
		return time.Duration(*v) * time.Millisecond
	}
	st.TotalTime = ms("total-time", r.TotalTime)
	st.Downtime = ms("downtime", r.Downtime)
	st.ExpectedDowntime = ms("expected-downtime", r.ExpectedDowntime)
	st.SetupTime = ms("setup-time", r.SetupTime)
	if p := r.CPUThrottlePercent; p != nil {
		if *p < 0 || *p > 100 {
			errs = append(errs, fmt.Errorf("cpu-throttle-percentage %d out of range", *p))
		} else {
			st.CPUThrottlePercent = uint32(*p)
		}
	}
	if ram := r.RAM; ram != nil {
		u := func(name string, v int64) uint64 {
			if v < 0 {
				errs = append(errs, fmt.Errorf("ram.%s %d is negative", name, v))
				return 0
			}
			return uint64(v)
		}
		st.TransferredBytes = u("transferred", ram.Transferred)
		st.RemainingBytes = u("remaining", ram.Remaining)
		st.TotalBytes = u("total", ram.Total)
		st.DuplicatePages = u("duplicate", ram.Duplicate)
		st.NormalPages = u("normal", ram.Normal)
		st.DirtyPagesRate = u("dirty-pages-rate", ram.DirtyPagesRate)
		st.DirtySyncCount = u("dirty-sync-count", ram.DirtySyncCount)
		if ram.Mbps < 0 {
			errs = append(errs, fmt.Errorf("ram.mbps %g is negative", ram.Mbps))
		} else {
			st.Mbps = ram.Mbps
		}
	}
	if len(errs) > 0 {
		return hypervisor.Status{}, fmt.Errorf("decode query-migrate reply: %w: %w", sdk.ErrCorruptInput, errors.Join(errs...))
	}
	return st, nil
}

// migEvent is a MIGRATION or MIGRATION_PASS event.
type migEvent struct {
	Time   time.Time
	Type   hypervisor.EventType // EventStatus, EventPass or EventStopped
	Status string               // MIGRATION
	Pass   uint64               // MIGRATION_PASS
}

// decodeEvent reads a go-qemu event. It returns ok=false for events the
// driver does not follow, and an error for a migration event whose data is
// malformed.
func decodeEvent(e qmp.Event) (migEvent, bool, error) {
	var me migEvent
	switch e.Event {
	case "MIGRATION":
		me.Type = hypervisor.EventStatus
	case "MIGRATION_PASS":
		me.Type = hypervisor.EventPass
	case "STOP":
		// The switchover's start: QEMU holds its big lock while it writes
		// the last pass, so this timestamp is the only timely sign of it.
		me.Type = hypervisor.EventStopped
		me.Time = eventTime(e.Timestamp.Seconds, e.Timestamp.Microseconds)
		return me, true, nil
	default:
		return me, false, nil
	}
	// go-qemu hands the data over as a generic map; re-encoding it is the
	// simplest way to read it with typed fields (events are rare).
	data, err := json.Marshal(e.Data)
	if err != nil {
		return me, false, fmt.Errorf("decode %s event: %w: %w", e.Event, sdk.ErrCorruptInput, err)
	}
	var d struct {
		Status *string  `json:"status"`
		Pass   *float64 `json:"pass"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return me, false, fmt.Errorf("decode %s event: %w: %w", e.Event, sdk.ErrCorruptInput, err)
	}
	switch me.Type {
	case hypervisor.EventStatus:
		if d.Status == nil || *d.Status == "" {
			return me, false, fmt.Errorf("decode MIGRATION event: %w: no status", sdk.ErrCorruptInput)
		}
		me.Status = *d.Status
	case hypervisor.EventPass:
		// JSON numbers arrive as float64 through the map; a pass count
		// must be a whole number that fits.
		if d.Pass == nil || *d.Pass < 0 || *d.Pass != math.Trunc(*d.Pass) || *d.Pass >= 1<<53 {
			return me, false, fmt.Errorf("decode MIGRATION_PASS event: %w: pass missing or not a count", sdk.ErrCorruptInput)
		}
		me.Pass = uint64(*d.Pass)
	}
	me.Time = eventTime(e.Timestamp.Seconds, e.Timestamp.Microseconds)
	return me, true, nil
}

// eventTime is QEMU's event timestamp, or the local time when QEMU could
// not read its clock (it then sends -1) or sent nonsense.
func eventTime(sec, usec int64) time.Time {
	if sec <= 0 || sec > 1<<40 || usec < 0 || usec >= 1e6 {
		return time.Now()
	}
	return time.Unix(sec, usec*1000)
}

// runStatus is query-status's reply.
type runStatus struct {
	Status  string `json:"status"`
	Running bool   `json:"running"`
}

// migrationCapability is one entry of query-migrate-capabilities.
type migrationCapability struct {
	Capability string `json:"capability"`
	State      bool   `json:"state"`
}
