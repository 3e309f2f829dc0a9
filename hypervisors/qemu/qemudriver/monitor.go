package qemudriver

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
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/dwcp/dwcp/sdk"
	"github.com/hashicorp/go-hclog"
)

var (
	// errMonitorClosed ends a monitor that its owner closed.
	errMonitorClosed = errors.New("monitor closed")
	// errQEMUGone: the socket exists but nobody listens on it; the QEMU
	// that made it has exited and will not come back.
	errQEMUGone = errors.New("nobody listens on the socket (QEMU exited?)")
)

// monitor is one QMP connection to one QEMU, spoken through go-qemu's
// SocketMonitor.
//
// go-qemu dials the socket itself and exposes neither the connection nor a
// context: a QEMU that never answers (stopped, or its single monitor held
// by another client) would block Connect and Run forever. So the driver
// dials QEMU itself and hands go-qemu one end of a private pipe: a unix
// socket in a 0700 directory, relayed to QEMU line by line. Closing the
// QEMU side ends go-qemu's reader, which unblocks every call; no go-qemu
// method is ever called concurrently with Connect.
//
// The relay also works around two things go-qemu does with replies. Its
// reader hands Run a slice of its bufio.Scanner buffer, which the next line
// overwrites while the caller may still be reading it (a data race), and
// its Run keeps only an error's desc, dropping the class. So the relay
// keeps a copy of every reply for run, and passes go-qemu a short stand-in
// (success, or an error) that only tells Run the command is answered; after
// a reply it passes nothing more until run is done with it. go-qemu's
// reader still sees every event, which the driver takes from its Events
// channel. Lines longer than go-qemu's 64 KiB limit are refused by the
// relay instead of silently killing that reader.
type monitor struct {
	path    string
	pid     int // QEMU's pid from SO_PEERCRED; 0 if unknown
	version qmp.Version
	log     hclog.Logger

	qemu  net.Conn // to QEMU
	local net.Conn // the pipe end go-qemu talks to
	mon   *qmp.SocketMonitor

	// turn admits one command at a time, so the last error reply seen is
	// the current command's. A command whose caller gave up keeps its
	// turn until QEMU answers (orphaned), so that its late reply is not
	// taken for the next command's.
	turn     chan struct{}
	orphaned atomic.Bool
	// Once holding is set (after the handshake), the relay passes no line
	// after a reply until run acknowledges on ack that go-qemu is done
	// with the stand-in.
	holding atomic.Bool
	ack     chan struct{}

	mu        sync.Mutex
	lastReply []byte        // copy of the current command's reply line
	lastErr   *qmpErrorBody // its error, if it is an error reply
	deadErr   error
	subs      map[chan migEvent]struct{}
	drained   bool // the event stream ended; subscribers get closed channels
	closing   bool // shutdown began: no new goroutines (wg.Wait is running)

	dead      chan struct{}
	killOnce  sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// pipeSeq names pipe sockets uniquely within the process.
var pipeSeq atomic.Uint64

// dialMonitor connects to the QMP socket at path and completes the QMP
// handshake, all within ctx. An absent socket is sdk.ErrNotFound; one that
// nobody answers on is sdk.ErrUnavailable.
func dialMonitor(ctx context.Context, path, pipeDir string, log hclog.Logger) (*monitor, error) {
	if path == "" {
		return nil, fmt.Errorf("qmp: %w: empty socket path", sdk.ErrInvalidArgument)
	}
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("qmp socket %s: %w", path, sdk.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp socket %s: %w: %w", path, sdk.ErrUnavailable, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("qmp socket %s: %w: not a socket", path, sdk.ErrNotFound)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT):
			return nil, fmt.Errorf("qmp socket %s: %w", path, sdk.ErrNotFound)
		case errors.Is(err, syscall.ECONNREFUSED):
			return nil, fmt.Errorf("qmp socket %s: %w: %w", path, sdk.ErrUnavailable, errQEMUGone)
		}
		return nil, fmt.Errorf("qmp socket %s: %w: %w", path, sdk.ErrUnavailable, err)
	}
	m := &monitor{path: path, qemu: c, log: log, dead: make(chan struct{}), subs: map[chan migEvent]struct{}{},
		turn: make(chan struct{}, 1), ack: make(chan struct{}, 1)}
	if pid, err := peerPID(c); err == nil {
		m.pid = pid
	} else {
		log.Debug("no peer credentials on QMP socket", "path", path, "error", err)
	}
	if err := m.openPipe(ctx, pipeDir); err != nil {
		_ = c.Close()
		return nil, err
	}
	m.wg.Add(2)
	go m.fromQEMU()
	go m.toQEMU()

	// Connect reads the banner and sends qmp_capabilities; it blocks while
	// QEMU is silent, so it runs aside and the pipe is cut when ctx ends.
	done := make(chan error, 1)
	go func() { done <- m.mon.Connect() }()
	var cerr error
	select {
	case cerr = <-done:
	case <-ctx.Done():
		m.kill(fmt.Errorf("handshake abandoned: %w", context.Cause(ctx)))
		<-done
		m.shutdown()
		return nil, fmt.Errorf("qmp socket %s: %w: no QMP greeting (QEMU hung, or another client holds its monitor): %w", path, sdk.ErrUnavailable, ctx.Err())
	}
	if cerr != nil {
		err := m.err()
		m.kill(errMonitorClosed)
		m.shutdown()
		if err == nil {
			err = cerr
		}
		return nil, fmt.Errorf("qmp handshake on %s: %w: %w", path, sdk.ErrUnavailable, err)
	}
	if m.mon.Version != nil {
		m.version = *m.mon.Version
	}
	m.holding.Store(true)
	// go-qemu's reader blocks on an unread event, and a blocked reader
	// blocks Run: the stream is drained for as long as it exists.
	events, err := m.mon.Events(ctx)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("qmp events on %s: %w", path, err)
	}
	m.wg.Add(1)
	go m.dispatch(events)
	return m, nil
}

// openPipe makes the private socket go-qemu dials.
func (m *monitor) openPipe(ctx context.Context, dir string) error {
	// A long-lived plugin may see a tmp cleaner remove the directory.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("qmp pipe for %s: %w", m.path, err)
	}
	p := filepath.Join(dir, "p"+strconv.FormatUint(pipeSeq.Add(1), 10)+".sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		return fmt.Errorf("qmp pipe for %s: %w", m.path, err)
	}
	defer ln.Close() // also removes the socket file
	timeout := 5 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), time.Millisecond)
	}
	// A unix connect completes once queued on the listener, so dialing
	// before accepting does not block.
	mon, err := qmp.NewSocketMonitor("unix", p, timeout)
	if err != nil {
		return fmt.Errorf("qmp pipe for %s: %w", m.path, err)
	}
	if err := ln.SetDeadline(time.Now().Add(timeout)); err != nil {
		_ = mon.Disconnect()
		return fmt.Errorf("qmp pipe for %s: %w", m.path, err)
	}
	local, err := ln.Accept()
	if err != nil {
		_ = mon.Disconnect()
		return fmt.Errorf("qmp pipe for %s: %w", m.path, err)
	}
	m.mon, m.local = mon, local
	return nil
}

// Stand-ins the relay gives go-qemu for a reply, once the handshake is
// done: Run needs only to know that the command was answered and whether
// it failed.
var (
	standInReturn = []byte(`{"return":{}}` + "\r\n")
	standInError  = []byte(`{"error":{"class":"GenericError","desc":"error reply (see the driver's copy)"}}` + "\r\n")
)

// fromQEMU relays QEMU's lines to go-qemu, keeping replies for run.
func (m *monitor) fromQEMU() {
	defer m.wg.Done()
	r := bufio.NewReaderSize(m.qemu, maxQMPLine)
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			m.kill(fmt.Errorf("%w: QEMU sent a QMP line over %d bytes, more than go-qemu reads", sdk.ErrCorruptInput, maxQMPLine))
			return
		}
		if len(line) > 0 {
			kind, e := classifyLine(line)
			hold := kind == lineReply && m.holding.Load()
			out := line
			if hold {
				m.mu.Lock()
				m.lastReply = append(m.lastReply[:0], line...)
				m.lastErr = e
				m.mu.Unlock()
				out = standInReturn
				if e != nil {
					out = standInError
				}
			}
			if _, werr := m.local.Write(out); werr != nil {
				m.kill(werr)
				return
			}
			if hold {
				select {
				case <-m.ack:
				case <-m.dead:
					return
				}
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("QEMU closed the connection")
			}
			m.kill(err)
			return
		}
	}
}

// toQEMU relays go-qemu's commands to QEMU.
func (m *monitor) toQEMU() {
	defer m.wg.Done()
	_, err := io.Copy(m.qemu, m.local)
	if err == nil {
		err = errMonitorClosed
	}
	m.kill(err)
}

// dispatch hands migration events to subscribers. A subscriber that is
// behind loses events rather than stall go-qemu's reader: watchers also
// poll query-migrate, so a lost event only delays a report.
func (m *monitor) dispatch(events <-chan qmp.Event) {
	defer m.wg.Done()
	for e := range events {
		me, ok, err := decodeEvent(e)
		if err != nil {
			m.log.Warn("malformed QMP event", "path", m.path, "error", err)
			continue
		}
		if !ok {
			continue
		}
		m.mu.Lock()
		for ch := range m.subs {
			select {
			case ch <- me:
			default:
			}
		}
		m.mu.Unlock()
	}
	m.mu.Lock()
	m.drained = true
	for ch := range m.subs {
		close(ch)
	}
	m.subs = nil
	m.mu.Unlock()
}

// subscribe returns a channel of migration events, closed when the
// connection ends, and the function that stops the subscription.
func (m *monitor) subscribe() (<-chan migEvent, func()) {
	ch := make(chan migEvent, 32)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.drained {
		close(ch)
		return ch, func() {}
	}
	m.subs[ch] = struct{}{}
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[ch]; ok {
			delete(m.subs, ch)
			close(ch)
		}
	}
}

// kill cuts the connection; every pending and later call fails with why.
func (m *monitor) kill(why error) {
	m.killOnce.Do(func() {
		m.mu.Lock()
		m.deadErr = why
		m.mu.Unlock()
		close(m.dead)
		_ = m.qemu.Close()
		if m.local != nil {
			_ = m.local.Close()
		}
	})
}

// err is why the connection ended, or nil while it is up.
func (m *monitor) err() error {
	select {
	case <-m.dead:
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.deadErr
	default:
		return nil
	}
}

func (m *monitor) alive() bool { return m.err() == nil }

// spawn runs f in a goroutine the monitor waits for, unless shutdown has
// begun; then it reports false and f does not run.
func (m *monitor) spawn(f func()) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// shutdown releases go-qemu and waits for the relay and dispatch
// goroutines. The connection must already be cut.
func (m *monitor) shutdown() {
	m.mu.Lock()
	m.closing = true
	m.mu.Unlock()
	if m.mon != nil {
		_ = m.mon.Disconnect()
	}
	m.wg.Wait()
}

// Close ends the connection and waits for everything it started.
func (m *monitor) Close() {
	m.closeOnce.Do(func() {
		m.kill(errMonitorClosed)
		m.shutdown()
	})
}

// qmpCommand is a QMP request as QEMU reads it.
type qmpCommand struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

// run executes one command and decodes its return value into out (nil to
// ignore it), within ctx. A caller that gives up leaves the command
// running: a QEMU that is merely slow answers it and the connection stays
// usable. The connection is cut only when a later caller, waiting behind
// such an abandoned command, gives up too: QEMU then has not answered for
// two deadlines.
func (m *monitor) run(ctx context.Context, cmd string, args, out any) error {
	req, err := json.Marshal(qmpCommand{Execute: cmd, Arguments: args})
	if err != nil {
		return fmt.Errorf("qmp %s: encode: %w", cmd, err)
	}
	select {
	case m.turn <- struct{}{}:
	case <-m.dead:
		return fmt.Errorf("qmp %s on %s: %w: %w", cmd, m.path, sdk.ErrUnavailable, m.err())
	case <-ctx.Done():
		if m.orphaned.Load() {
			m.kill(fmt.Errorf("QEMU did not answer an abandoned command: %w", context.Cause(ctx)))
		}
		return m.ctxErr(cmd, ctx)
	}
	if err := m.err(); err != nil {
		<-m.turn
		return fmt.Errorf("qmp %s on %s: %w: %w", cmd, m.path, sdk.ErrUnavailable, err)
	}
	m.mu.Lock()
	m.lastReply, m.lastErr = nil, nil
	m.mu.Unlock()
	// Run's own result is only "answered or not": the reply is the
	// relay's copy (see monitor).
	done := make(chan error, 1)
	if !m.spawn(func() {
		_, err := m.mon.Run(req)
		done <- err
	}) {
		<-m.turn
		return fmt.Errorf("qmp %s on %s: %w: %w", cmd, m.path, sdk.ErrUnavailable, errMonitorClosed)
	}
	var runErr error
	select {
	case runErr = <-done:
	case <-ctx.Done():
		m.orphaned.Store(true)
		if !m.spawn(func() {
			<-done
			m.takeReply()
			m.orphaned.Store(false)
			<-m.turn
		}) {
			// Shutting down: Run ends with the connection.
			<-done
			<-m.turn
		}
		return m.ctxErr(cmd, ctx)
	}
	defer func() { <-m.turn }()
	reply, qe := m.takeReply()
	if qe != nil {
		return &QMPError{Command: cmd, Class: qe.Class, Desc: qe.Desc}
	}
	if runErr != nil || reply == nil {
		// No reply arrived: the connection ended under the command.
		why := m.err()
		if why == nil {
			why = runErr
		}
		return fmt.Errorf("qmp %s on %s: %w: %w", cmd, m.path, sdk.ErrUnavailable, why)
	}
	if out == nil {
		return nil
	}
	var r struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(reply, &r); err != nil {
		return fmt.Errorf("qmp %s on %s: reply: %w: %w", cmd, m.path, sdk.ErrCorruptInput, err)
	}
	if err := json.Unmarshal(r.Return, out); err != nil {
		return fmt.Errorf("qmp %s on %s: reply: %w: %w", cmd, m.path, sdk.ErrCorruptInput, err)
	}
	return nil
}

// takeReply returns the reply the relay kept for the command that just
// returned from go-qemu's Run, and releases the relay, which waits after
// each reply it passed on. A command that got no reply (the connection
// ended) finds none and releases nothing: a spare release would let the
// relay run past the next reply.
func (m *monitor) takeReply() ([]byte, *qmpErrorBody) {
	m.mu.Lock()
	reply, qe := m.lastReply, m.lastErr
	m.lastReply, m.lastErr = nil, nil
	m.mu.Unlock()
	if reply != nil {
		select {
		case m.ack <- struct{}{}:
		default:
		}
	}
	return reply, qe
}

// ctxErr describes a call that ended with its context: a deadline means
// QEMU did not answer (sdk.ErrUnavailable); a cancel is the caller's.
func (m *monitor) ctxErr(cmd string, ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("qmp %s on %s: %w: QEMU did not answer in time: %w", cmd, m.path, sdk.ErrUnavailable, ctx.Err())
	}
	return fmt.Errorf("qmp %s on %s: %w", cmd, m.path, ctx.Err())
}
