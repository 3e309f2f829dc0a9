package qemudriver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

type role int

const (
	roleSource role = iota + 1
	roleDestination
)

func (r role) String() string {
	if r == roleSource {
		return "source"
	}
	return "destination"
}

// migration is one side of one migration as this driver sees it.
type migration struct {
	id      string
	role    role
	vm      string     // QMP socket path
	started *startedVM // a destination VM this driver started, else nil

	mu        sync.Mutex
	mon       *monitor
	starting  bool               // StartMigration was called
	migrating bool               // migrate / migrate-incoming succeeded
	final     *hypervisor.Status // set once released: the last status seen
	notes     []string           // log events every watcher receives
}

func newID(prefix string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// monitor returns the migration's live monitor, dialing again when the
// previous connection was lost (a call abandoned by its context cuts it).
// A released migration has none: sdk.ErrFailedPrecondition.
func (m *migration) monitor(ctx context.Context, d *Driver) (*monitor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.final != nil {
		return nil, fmt.Errorf("migration %s: %w: already %s and released", m.id, sdk.ErrFailedPrecondition, m.final.State)
	}
	if m.mon != nil && m.mon.alive() {
		return m.mon, nil
	}
	if m.mon != nil {
		m.mon.Close()
		m.mon = nil
	}
	mon, err := d.dial(ctx, m.vm)
	if err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.id, err)
	}
	m.mon = mon
	return mon, nil
}

func (m *migration) note(msg string) {
	m.mu.Lock()
	m.notes = append(m.notes, msg)
	m.mu.Unlock()
}

func (m *migration) notesFrom(i int) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i >= len(m.notes) {
		return nil
	}
	return slices.Clone(m.notes[i:])
}

// release closes the monitor and records the final status; idempotent.
func (m *migration) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mon != nil {
		m.mon.Close()
		m.mon = nil
	}
	if m.final == nil {
		m.final = &hypervisor.Status{State: stateNone}
	}
}

func (m *migration) setFinal(st hypervisor.Status) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mon != nil {
		m.mon.Close()
		m.mon = nil
	}
	m.final = &st
}

func (m *migration) finalStatus() (hypervisor.Status, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.final == nil {
		return hypervisor.Status{}, false
	}
	return *m.final, true
}

// lookup finds a migration by id.
func (d *Driver) lookup(id string) (*migration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, ok := d.migrations[id]
	if !ok {
		return nil, fmt.Errorf("migration %q: %w", id, sdk.ErrNotFound)
	}
	return m, nil
}

// reserve claims a VM's QMP socket for a new migration.
func (d *Driver) reserve(m *migration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("qemu driver: %w: closed", sdk.ErrUnavailable)
	}
	if other, ok := d.byVM[m.vm]; ok {
		return fmt.Errorf("vm %s: %w: migration %s (%s) holds it", m.vm, sdk.ErrFailedPrecondition, other.id, other.role)
	}
	d.byVM[m.vm] = m
	return nil
}

// register makes a reserved migration visible by id.
func (d *Driver) register(m *migration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.migrations[m.id] = m
}

// forget drops a migration and lets go of its VM.
func (d *Driver) forget(m *migration) {
	m.release()
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.migrations, m.id)
	if d.byVM[m.vm] == m {
		delete(d.byVM, m.vm)
	}
}

// unclaim lets go of a migration's VM but keeps the record, so that a
// cancelled or finished migration can still be queried until forgotten.
func (d *Driver) unclaim(m *migration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byVM[m.vm] == m {
		delete(d.byVM, m.vm)
	}
}

// PrepareSource connects to a running VM, turns on the return path and
// migration events (plus p.Capabilities) and sets the bandwidth, downtime
// and switchover parameters.
func (d *Driver) PrepareSource(ctx context.Context, vm hypervisor.VMRef, p hypervisor.Params) (string, hypervisor.VMInfo, error) {
	m := &migration{id: newID("src-"), role: roleSource, vm: vm.Address}
	if vm.Address == "" {
		return "", hypervisor.VMInfo{}, fmt.Errorf("prepare source: %w: empty VM address", sdk.ErrInvalidArgument)
	}
	if err := d.reserve(m); err != nil {
		return "", hypervisor.VMInfo{}, fmt.Errorf("prepare source: %w", err)
	}
	info, err := d.prepareSource(ctx, m, p)
	if err != nil {
		d.forget(m)
		return "", hypervisor.VMInfo{}, fmt.Errorf("prepare source %s: %w", vm.Address, err)
	}
	d.register(m)
	d.log.Info("source prepared", "migration", m.id, "vm", vm.Address, "name", info.Name)
	return m.id, info, nil
}

func (d *Driver) prepareSource(ctx context.Context, m *migration, p hypervisor.Params) (hypervisor.VMInfo, error) {
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return hypervisor.VMInfo{}, err
	}
	var st runStatus
	if err := mon.run(ctx, "query-status", nil, &st); err != nil {
		return hypervisor.VMInfo{}, err
	}
	if st.Status != "running" {
		return hypervisor.VMInfo{}, fmt.Errorf("%w: VM is %s, not running", sdk.ErrFailedPrecondition, st.Status)
	}
	cur, err := queryMigrate(ctx, mon)
	if err != nil {
		return hypervisor.VMInfo{}, err
	}
	if cur.State != stateNone && !finalState(cur.State) {
		return hypervisor.VMInfo{}, fmt.Errorf("%w: a migration is already %s", sdk.ErrFailedPrecondition, cur.State)
	}
	if err := setCapabilities(ctx, mon, p.Capabilities); err != nil {
		return hypervisor.VMInfo{}, err
	}
	if err := d.setParameters(ctx, m, mon, p, true); err != nil {
		return hypervisor.VMInfo{}, err
	}
	return d.inspect(ctx, mon)
}

// alwaysOn are the capabilities every DWCP migration needs on both ends:
// return-path, so the source reports completed only after the destination
// confirmed (SHUT on the return path) instead of when the host's relay took
// the last byte; events, without which QEMU sends no MIGRATION or
// MIGRATION_PASS events.
var alwaysOn = []string{"return-path", "events"}

// offUnlessAsked are capabilities a VM keeps from an earlier migration
// (one that arrived by xbzrle keeps xbzrle on) and that change what QEMU
// sends or how: DWCP turns them off unless the host asks for them, so that
// a migration's stream and pace do not depend on the VM's history. multifd
// in particular would open more connections than the host's socket takes.
var offUnlessAsked = []string{"xbzrle", "compress", "multifd", "auto-converge", "postcopy-ram", "release-ram"}

// setCapabilities turns on alwaysOn and the extra capabilities. An extra
// entry is a capability name ("xbzrle"), or name=on/off to set a state.
func setCapabilities(ctx context.Context, mon *monitor, extra []string) error {
	var have []migrationCapability
	if err := mon.run(ctx, "query-migrate-capabilities", nil, &have); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, c := range have {
		known[c.Capability] = true
	}
	want := map[string]bool{}
	for _, c := range offUnlessAsked {
		if known[c] {
			want[c] = false
		}
	}
	for _, c := range alwaysOn {
		want[c] = true
	}
	for _, e := range extra {
		name, val, hasVal := strings.Cut(strings.TrimSpace(e), "=")
		state := true
		if hasVal {
			switch strings.ToLower(val) {
			case "on", "true", "1", "yes":
			case "off", "false", "0", "no":
				state = false
			default:
				return fmt.Errorf("capability %q: %w: state must be on or off", e, sdk.ErrInvalidArgument)
			}
		}
		if slices.Contains(alwaysOn, name) && !state {
			return fmt.Errorf("capability %s: %w: DWCP needs it on", name, sdk.ErrInvalidArgument)
		}
		want[name] = state
	}
	args := make([]migrationCapability, 0, len(want))
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if !known[name] {
			return fmt.Errorf("capability %s: %w: this QEMU (%s) does not have it", name, sdk.ErrUnsupported, mon.version)
		}
		args = append(args, migrationCapability{Capability: name, State: want[name]})
	}
	return mon.run(ctx, "migrate-set-capabilities", map[string]any{"capabilities": args}, nil)
}

// setParameters applies p. The limits (bandwidth, downtime, switchover
// bandwidth) apply to a source only; Extra applies to both ends
// (multifd-channels, for instance, must match). With defaultBandwidth a
// zero MaxBandwidth sets DefaultMaxBandwidth (PrepareSource); without it
// zero leaves QEMU's value (SetLimits).
func (d *Driver) setParameters(ctx context.Context, m *migration, mon *monitor, p hypervisor.Params, defaultBandwidth bool) error {
	have := map[string]json.RawMessage{}
	if err := mon.run(ctx, "query-migrate-parameters", nil, &have); err != nil {
		return err
	}
	args := map[string]any{}
	for k, v := range p.Extra {
		cur, ok := have[k]
		if !ok {
			return fmt.Errorf("migration parameter %s: %w: this QEMU (%s) does not have it", k, sdk.ErrInvalidArgument, mon.version)
		}
		val, err := typedLike(cur, v)
		if err != nil {
			return fmt.Errorf("migration parameter %s=%q: %w: %w", k, v, sdk.ErrInvalidArgument, err)
		}
		args[k] = val
	}
	if m.role == roleSource {
		switch {
		case p.MaxBandwidth > 0:
			args["max-bandwidth"] = p.MaxBandwidth
		case defaultBandwidth:
			args["max-bandwidth"] = uint64(DefaultMaxBandwidth)
		}
		if p.DowntimeLimit < 0 || p.DowntimeLimit > maxDowntimeLimit {
			return fmt.Errorf("downtime limit %s: %w: QEMU accepts up to %s", p.DowntimeLimit, sdk.ErrInvalidArgument, maxDowntimeLimit)
		}
		if p.DowntimeLimit > 0 {
			// Rounded up: a limit below 1 ms must not become "no downtime".
			args["downtime-limit"] = uint64((p.DowntimeLimit + time.Millisecond - 1) / time.Millisecond)
		}
		if p.AvailSwitchoverBandwidth > 0 {
			if _, ok := have["avail-switchover-bandwidth"]; ok {
				args["avail-switchover-bandwidth"] = p.AvailSwitchoverBandwidth
			} else {
				msg := fmt.Sprintf("QEMU %s has no avail-switchover-bandwidth (added in 8.2): switchover follows QEMU's own bandwidth estimate, which the host's buffering can inflate", mon.version)
				m.note(msg)
				d.log.Warn(msg, "migration", m.id)
			}
		}
	}
	if len(args) == 0 {
		return nil
	}
	return mon.run(ctx, "migrate-set-parameters", args, nil)
}

// typedLike parses s as the JSON type of cur (a query-migrate-parameters
// value), so that Extra's strings reach QEMU as numbers or booleans.
func typedLike(cur json.RawMessage, s string) (any, error) {
	var v any
	if err := json.Unmarshal(cur, &v); err != nil {
		return nil, err
	}
	switch v.(type) {
	case float64:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("want a non-negative integer: %w", err)
		}
		return n, nil
	case bool:
		return strconv.ParseBool(s)
	case string:
		return s, nil
	}
	return nil, fmt.Errorf("parameter of JSON type %T cannot be set from a string", v)
}

func queryMigrate(ctx context.Context, mon *monitor) (hypervisor.Status, error) {
	var raw json.RawMessage
	if err := mon.run(ctx, "query-migrate", nil, &raw); err != nil {
		return hypervisor.Status{}, err
	}
	return decodeStatus(raw)
}

// StartMigration has the source QEMU migrate into the unix socket the host
// listens on.
func (d *Driver) StartMigration(ctx context.Context, id, endpoint string) error {
	m, err := d.lookup(id)
	if err != nil {
		return fmt.Errorf("start migration: %w", err)
	}
	if m.role != roleSource {
		return fmt.Errorf("start migration %s: %w: a destination reads its stream, it does not start one", id, sdk.ErrFailedPrecondition)
	}
	if endpoint == "" {
		return fmt.Errorf("start migration %s: %w: empty endpoint", id, sdk.ErrInvalidArgument)
	}
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return fmt.Errorf("start migration: %w", err)
	}
	m.mu.Lock()
	already := m.starting
	m.starting = true
	m.mu.Unlock()
	if already {
		return fmt.Errorf("start migration %s: %w: already started", id, sdk.ErrFailedPrecondition)
	}
	if err := mon.run(ctx, "migrate", map[string]any{"uri": "unix:" + endpoint}, nil); err != nil {
		m.mu.Lock()
		m.starting = false
		m.mu.Unlock()
		return fmt.Errorf("start migration %s: %w", id, err)
	}
	// From here on query-migrate describes this migration; before, it
	// showed the end of a previous one.
	m.mu.Lock()
	m.migrating = true
	m.mu.Unlock()
	d.log.Info("migration started", "migration", id, "endpoint", endpoint)
	return nil
}

// QueryMigration is query-migrate, or the last status of a released
// migration.
func (d *Driver) QueryMigration(ctx context.Context, id string) (hypervisor.Status, error) {
	m, err := d.lookup(id)
	if err != nil {
		return hypervisor.Status{}, fmt.Errorf("query migration: %w", err)
	}
	st, err := d.query(ctx, m)
	if err != nil {
		return hypervisor.Status{}, fmt.Errorf("query migration %s: %w", id, err)
	}
	return st, nil
}

func (d *Driver) query(ctx context.Context, m *migration) (hypervisor.Status, error) {
	if st, ok := m.finalStatus(); ok {
		return st, nil
	}
	m.mu.Lock()
	migrating := m.migrating
	m.mu.Unlock()
	if !migrating {
		// QEMU still reports how its previous migration ended.
		return hypervisor.Status{State: stateNone}, nil
	}
	mon, err := m.monitor(ctx, d)
	if err != nil {
		if st, ok := m.finalStatus(); ok {
			return st, nil
		}
		return hypervisor.Status{}, err
	}
	return queryMigrate(ctx, mon)
}

// SetLimits changes the source's limits while it migrates.
func (d *Driver) SetLimits(ctx context.Context, id string, p hypervisor.Params) error {
	m, err := d.lookup(id)
	if err != nil {
		return fmt.Errorf("set limits: %w", err)
	}
	if m.role != roleSource {
		return fmt.Errorf("set limits on %s: %w: limits apply to the source", id, sdk.ErrFailedPrecondition)
	}
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return fmt.Errorf("set limits: %w", err)
	}
	if err := d.setParameters(ctx, m, mon, p, false); err != nil {
		return fmt.Errorf("set limits on %s: %w", id, err)
	}
	return nil
}

// WatchMigration starts a watch (see watch); it ends when ctx ends, the
// migration reaches a final state, or the driver closes.
func (d *Driver) WatchMigration(ctx context.Context, id string) (<-chan hypervisor.Event, error) {
	m, err := d.lookup(id)
	if err != nil {
		return nil, fmt.Errorf("watch migration: %w", err)
	}
	out := make(chan hypervisor.Event)
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, fmt.Errorf("watch migration %s: %w: driver closed", id, sdk.ErrUnavailable)
	}
	d.wg.Add(1)
	d.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.life, cancel)
	go func() {
		defer d.wg.Done()
		defer stop()
		defer cancel()
		d.watch(ctx, m, out)
	}()
	return out, nil
}

// watch reports MIGRATION and MIGRATION_PASS events and a query-migrate
// poll every PollInterval, each with a full status, until the migration
// reaches a final state or ctx ends; then it closes out.
func (d *Driver) watch(ctx context.Context, m *migration, out chan<- hypervisor.Event) {
	defer close(out)
	send := func(e hypervisor.Event) bool {
		if e.Time.IsZero() {
			e.Time = time.Now()
		}
		select {
		case out <- e:
			return true
		case <-ctx.Done():
			return false
		}
	}
	var sub <-chan migEvent
	unsub := func() {}
	defer func() { unsub() }()
	tick := time.NewTicker(d.cfg.PollInterval)
	defer tick.Stop()
	notes, unreachable := 0, 0

	// report queries the status and sends e with it; it returns false when
	// the watch is over.
	report := func(e hypervisor.Event) bool {
		cctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
		st, err := d.query(cctx, m)
		if err == nil {
			st = d.settle(cctx, m, st)
		}
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return false
			}
			// A QEMU that is gone (socket removed or refused) will not
			// come back: after a few tries the migration has failed. A
			// slow one (timeouts) is only reported.
			if errors.Is(err, sdk.ErrNotFound) || errors.Is(err, errQEMUGone) {
				unreachable++
			}
			if unreachable >= 3 {
				send(hypervisor.Event{Type: hypervisor.EventStatus, State: stateFailed, Message: err.Error(),
					Status: &hypervisor.Status{State: stateFailed, Error: "QEMU unreachable: " + err.Error()}})
				return false
			}
			return send(hypervisor.Event{Type: hypervisor.EventLog, Message: "query-migrate: " + err.Error()})
		}
		unreachable = 0
		if e.Type == hypervisor.EventStatus && e.State == "" {
			e.State = st.State
		}
		e.Status = &st
		if !send(e) {
			return false
		}
		if !finalState(st.State) {
			return true
		}
		if e.Type != hypervisor.EventStatus || e.State != st.State {
			// The migration ended between an event and its query: the
			// last event a watcher sees names the final state.
			final := st
			send(hypervisor.Event{Type: hypervisor.EventStatus, State: st.State, Status: &final})
		}
		return false
	}

	for first := true; ; first = false {
		for _, n := range m.notesFrom(notes) {
			notes++
			if !send(hypervisor.Event{Type: hypervisor.EventLog, Message: n}) {
				return
			}
		}
		if sub == nil {
			if _, ok := m.finalStatus(); !ok {
				cctx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
				if mon, err := m.monitor(cctx, d); err == nil {
					sub, unsub = mon.subscribe()
				}
				cancel()
			}
		}
		if first {
			// The state now, so that a watcher never waits a period
			// (or for an event that already happened) to learn it.
			if !report(hypervisor.Event{Type: hypervisor.EventStatus}) {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case e, ok := <-sub:
			if !ok {
				unsub()
				sub, unsub = nil, func() {}
				continue
			}
			if e.Type == hypervisor.EventStopped {
				// No query: it would wait for the switchover to end.
				if !send(hypervisor.Event{Time: e.Time, Type: e.Type}) {
					return
				}
				continue
			}
			if !report(hypervisor.Event{Time: e.Time, Type: e.Type, State: e.Status, Pass: e.Pass}) {
				return
			}
		case <-tick.C:
			if !report(hypervisor.Event{Type: hypervisor.EventStatus}) {
				return
			}
		}
	}
}

// settle re-reads a source status that just turned completed until QEMU
// has filled in its totals: QEMU sets the state before it computes
// total-time and downtime, and a query right after the MIGRATION event
// sees zeros there. It gives up after about a second.
func (d *Driver) settle(ctx context.Context, m *migration, st hypervisor.Status) hypervisor.Status {
	for i := 0; i < 50 && m.role == roleSource && st.State == stateCompleted && st.TotalTime == 0; i++ {
		select {
		case <-ctx.Done():
			return st
		case <-time.After(20 * time.Millisecond):
		}
		again, err := d.query(ctx, m)
		if err != nil {
			return st
		}
		st = again
	}
	return st
}

// CancelMigration stops a migration. On the source, migrate_cancel, then
// the VM runs on there; on a destination this driver started, the VM is
// killed and its run directory removed.
func (d *Driver) CancelMigration(ctx context.Context, id string) error {
	m, err := d.lookup(id)
	if err != nil {
		return fmt.Errorf("cancel migration: %w", err)
	}
	if st, ok := m.finalStatus(); ok {
		return fmt.Errorf("cancel migration %s: %w: already %s", id, sdk.ErrFailedPrecondition, st.State)
	}
	if m.role == roleDestination {
		return d.cancelDestination(ctx, m)
	}
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return fmt.Errorf("cancel migration: %w", err)
	}
	m.mu.Lock()
	migrating := m.migrating
	m.mu.Unlock()
	st := hypervisor.Status{State: stateCancelled}
	if migrating {
		if st, err = queryMigrate(ctx, mon); err != nil {
			return fmt.Errorf("cancel migration %s: %w", id, err)
		}
		if !finalState(st.State) {
			if err := mon.run(ctx, "migrate_cancel", nil, nil); err != nil {
				return fmt.Errorf("cancel migration %s: %w", id, err)
			}
			if st, err = waitFinal(ctx, mon); err != nil {
				return fmt.Errorf("cancel migration %s: %w", id, err)
			}
		}
		if st.State == stateCompleted {
			// The stream got through before the cancel. The destination
			// has not been resumed (the host resumes it only after
			// verification), so the VM goes on here.
			m.note("migration completed before the cancel; resuming the VM on the source")
		}
		if err := d.ensureRunning(ctx, m, mon); err != nil {
			return fmt.Errorf("cancel migration %s: %w", id, err)
		}
	}
	m.setFinal(st)
	d.unclaim(m)
	d.log.Info("source migration cancelled", "migration", id, "state", st.State)
	return nil
}

// waitFinal polls query-migrate until a final state.
func waitFinal(ctx context.Context, mon *monitor) (hypervisor.Status, error) {
	for {
		st, err := queryMigrate(ctx, mon)
		if err != nil {
			return st, err
		}
		if finalState(st.State) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("wait for the migration to end (still %s): %w", st.State, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ensureRunning makes sure a source VM whose migration did not hand it over
// runs again: QEMU restarts it after a failed or cancelled migration, and
// after a completed one it stays in postmigrate until told to continue.
func (d *Driver) ensureRunning(ctx context.Context, m *migration, mon *monitor) error {
	var rs runStatus
	if err := mon.run(ctx, "query-status", nil, &rs); err != nil {
		return err
	}
	if rs.Running {
		return nil
	}
	d.log.Warn("source VM not running after its migration ended; continuing it", "migration", m.id, "state", rs.Status)
	if err := mon.run(ctx, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume source VM (%s): %w", rs.Status, err)
	}
	return nil
}

// FinishMigration ends a migration. On the source it checks that the
// migration is over and releases the monitor (a failed or cancelled one
// leaves the VM running there). On the destination, resume=true runs the VM
// (cont) once its incoming migration completed; resume=false abandons it:
// a VM this driver started is killed.
func (d *Driver) FinishMigration(ctx context.Context, id string, resume bool) (hypervisor.Status, error) {
	m, err := d.lookup(id)
	if err != nil {
		return hypervisor.Status{}, fmt.Errorf("finish migration: %w", err)
	}
	if st, ok := m.finalStatus(); ok {
		if resume && m.role == roleDestination && st.State != stateCompleted {
			return st, fmt.Errorf("finish migration %s: %w: it ended %s, nothing to resume", id, sdk.ErrFailedPrecondition, st.State)
		}
		d.forget(m)
		return st, nil
	}
	var st hypervisor.Status
	if m.role == roleSource {
		st, err = d.finishSource(ctx, m)
	} else {
		mode := finishDiscard
		if resume {
			mode = finishResume
		}
		st, err = d.finishDestination(ctx, m, mode)
	}
	if err != nil {
		return st, fmt.Errorf("finish migration %s: %w", id, err)
	}
	d.forget(m)
	d.log.Info("migration finished", "migration", id, "role", m.role.String(), "state", st.State, "resume", resume)
	return st, nil
}

// FinishMigrationPaused implements hypervisor.PausedFinisher: it ends a
// completed incoming migration without cont, checks with query-status that
// the VM is paused, and lets go of it. A VM this driver started keeps its
// run directory and waits, paused, for whoever continues it (`cont` on
// its QMP socket).
func (d *Driver) FinishMigrationPaused(ctx context.Context, id string) (hypervisor.Status, error) {
	m, err := d.lookup(id)
	if err != nil {
		return hypervisor.Status{}, fmt.Errorf("finish migration paused: %w", err)
	}
	if m.role != roleDestination {
		return hypervisor.Status{}, fmt.Errorf("finish migration %s paused: %w: it is the source side", id, sdk.ErrFailedPrecondition)
	}
	if st, ok := m.finalStatus(); ok {
		return st, fmt.Errorf("finish migration %s paused: %w: already %s and released", id, sdk.ErrFailedPrecondition, st.State)
	}
	st, err := d.finishDestination(ctx, m, finishPaused)
	if err != nil {
		return st, fmt.Errorf("finish migration %s paused: %w", id, err)
	}
	d.forget(m)
	d.log.Info("migration finished, VM left paused", "migration", id, "state", st.State)
	return st, nil
}

func (d *Driver) finishSource(ctx context.Context, m *migration) (hypervisor.Status, error) {
	mon, err := m.monitor(ctx, d)
	if err != nil {
		return hypervisor.Status{}, err
	}
	m.mu.Lock()
	migrating := m.migrating
	m.mu.Unlock()
	if !migrating {
		return hypervisor.Status{State: stateNone}, nil
	}
	st, err := queryMigrate(ctx, mon)
	if err != nil {
		return st, err
	}
	st = d.settle(ctx, m, st)
	switch st.State {
	case stateCompleted:
		var rs runStatus
		if err := mon.run(ctx, "query-status", nil, &rs); err != nil {
			return st, err
		}
		if rs.Running {
			return st, fmt.Errorf("%w: migration completed but the source VM is %s: it would run twice", sdk.ErrFailedPrecondition, rs.Status)
		}
	case stateFailed, stateCancelled:
		if err := d.ensureRunning(ctx, m, mon); err != nil {
			return st, err
		}
	default:
		return st, fmt.Errorf("%w: migration is %s; wait for it to end or cancel it", sdk.ErrFailedPrecondition, st.State)
	}
	m.setFinal(st)
	return st, nil
}
