package migrate

import (
	"context"
	"errors"

	"fmt"
	"net"
	"sync"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// SourceOptions configure one outgoing migration.
type SourceOptions struct {
	VM        hypervisor.VMRef
	Codecs    []pipeline.Codec
	Policy    pipeline.Policy
	PageStage pipeline.BatchBuilderFactory
	Mode      string
	// Params go to the source hypervisor (max-bandwidth, downtime-limit,
	// capabilities such as auto-converge).
	Params hypervisor.Params
	// SocketDir holds the private unix socket QEMU migrates into
	// (default: the system temp dir).
	SocketDir string
	// MaxDuration bounds the whole migration; past it a migration that has
	// not converged is cancelled (the VM keeps running here). 0: 30 min.
	MaxDuration time.Duration
	// Progress receives the pipeline's counters (optional).
	Progress *pipeline.Progress
	// OnStatus is called with each status the source hypervisor reports.
	OnStatus func(hypervisor.Status)
	// OnEvent is told about notable moments ("switchover", "not
	// converging: ...", "destination running").
	OnEvent func(string)
	// EffectiveRate, when set, is the stream rate (bytes/s) the path really
	// carries now. QEMU's max-bandwidth starts at it and follows it every
	// two seconds, so that QEMU's own estimates (expected downtime, when to
	// switch over) are made against the real rate rather than the speed of
	// the local socket into DWCP.
	EffectiveRate func() uint64
	// History, when set, records the migration in the host's page history
	// and sends pages the destination holds from earlier migrations
	// between the two hosts as references (pipeline.History).
	History *pipeline.History
	// SendWindow, when set, is what the session may keep in flight (bytes),
	// re-read every two seconds: little more than the path's
	// bandwidth-delay product, because every byte queued in DWCP is a byte
	// QEMU counts as sent, and at switchover the paused VM waits for that
	// queue to drain. It applies when the connection can cap itself
	// (transport.Session.SetSendWindow).
	SendWindow func() int64
	// Suspend leaves the destination VM paused once the migration
	// completed (`dwcp migrate --suspend`). A destination that does not
	// confirm it in its accept (an older host, a plugin that cannot) is
	// refused before QEMU starts migrating.
	Suspend bool
}

// Result describes a finished migration.
type Result struct {
	VM          hypervisor.VMInfo
	Source      hypervisor.Status // the source hypervisor's final status
	Pipeline    pipeline.Summary
	Destination string // the destination VM's address there
	// DestinationPaused: the destination VM is loaded and paused, as
	// SourceOptions.Suspend asked; it runs once someone continues it.
	DestinationPaused bool
	// Downtime runs from the moment the source QEMU stopped the VM for the
	// final pass to the moment the destination VM ran (with Suspend: to
	// the destination's report that it is loaded and paused): by the
	// destination's clock when it is consistent with the source's (see
	// Switchover), else until the destination's report arrived (one
	// network trip more).
	Downtime time.Duration
	Total    time.Duration
	Passes   uint64
	// Switchover breaks the downtime into its steps, so that a slow one
	// can be named.
	Switchover Switchover
}

// Switchover is the timeline of the stop-and-copy phase, each step as the
// time since the source QEMU stopped the VM (zero: not observed).
type Switchover struct {
	// SourceCompleted: the source QEMU reported "completed" (it has
	// written everything and, with the return path, the destination QEMU
	// has acknowledged loading it).
	SourceCompleted time.Duration
	// StreamDone: the pipeline has shipped the end of the stream and the
	// destination has confirmed the final checkpoint.
	StreamDone time.Duration
	// DestinationRunning: the destination's own clock when its VM ran
	// (only when the two clocks agree well enough to place it between
	// the stop and the result's arrival).
	DestinationRunning time.Duration
	// ResultReceived: the destination's "running" result reached the
	// source; the downtime ends here unless DestinationRunning is known.
	ResultReceived time.Duration
}

// ErrCancelFailed is wrapped by a Source error when the migration could not
// be cancelled on the source either: the VM's state there is then unknown.
var ErrCancelFailed = errors.New("cancelling on the source failed")

// Source migrates opts.VM over c (a session to the destination's dwcp
// serve). On any failure the migration is cancelled on the source: the VM
// keeps running here.
func Source(ctx context.Context, c Conn, hv hypervisor.Hypervisor, opts SourceOptions) (res Result, err error) {
	start := time.Now()
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = 30 * time.Minute
	}
	note := func(format string, args ...any) {
		if opts.OnEvent != nil {
			opts.OnEvent(fmt.Sprintf(format, args...))
		}
	}
	info, err := hv.InspectVM(ctx, opts.VM)
	if err != nil {
		return res, fmt.Errorf("inspect VM %s: %w", opts.VM.Address, err)
	}
	res.VM = info
	sock, cleanup, err := endpoint(opts.SocketDir, "out.sock")
	if err != nil {
		return res, err
	}
	defer cleanup()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return res, fmt.Errorf("listen for QEMU at %s: %w", sock, err)
	}
	qemu := newLazyConn(ln)
	defer qemu.Close()

	if opts.EffectiveRate != nil {
		if r := opts.EffectiveRate(); r > 0 {
			opts.Params.MaxBandwidth = r
		}
	}
	id, _, err := hv.PrepareSource(ctx, opts.VM, opts.Params)
	if err != nil {
		return res, fmt.Errorf("prepare source VM: %w", err)
	}
	released := false
	defer func() {
		if released {
			return
		}
		// The VM must keep running here: cancel (a completed migration is
		// rolled back by resuming the source VM).
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cerr := hv.CancelMigration(cctx, id); cerr != nil {
			err = fmt.Errorf("%w; and %w: %v", err, ErrCancelFailed, cerr)
		} else {
			note("migration cancelled on the source; the VM keeps running there")
		}
	}()

	mctx, cancel := context.WithTimeout(ctx, opts.MaxDuration)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// Watch the source hypervisor for progress, the stop-and-copy moment
	// and convergence.
	var mu sync.Mutex
	var stopAt time.Time
	var last hypervisor.Status
	events, err := hv.WatchMigration(mctx, id)
	if err != nil {
		return res, fmt.Errorf("watch migration: %w", err)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		conv := convergence{}
		for e := range events {
			if e.Type == hypervisor.EventStopped {
				// The hypervisor's own timestamp of the stop: the
				// status events of the switchover arrive only after
				// it, when QEMU lets go of its lock.
				mu.Lock()
				if stopAt.IsZero() && !e.Time.IsZero() {
					stopAt = e.Time
				}
				mu.Unlock()
				continue
			}
			if e.Status == nil {
				continue
			}
			st := *e.Status
			mu.Lock()
			last = st
			if stopAt.IsZero() && (st.State == "device" || st.State == "pre-switchover" || st.State == "completed") {
				stopAt = e.Time
				if stopAt.IsZero() {
					stopAt = time.Now()
				}
			}
			mu.Unlock()
			if opts.OnStatus != nil {
				opts.OnStatus(st)
			}
			if msg := conv.observe(st); msg != "" {
				note("%s", msg)
			}
		}
	}()

	if opts.EffectiveRate != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			followRate(mctx, hv, id, opts.Params, opts.EffectiveRate, note)
		}()
	}
	if w, ok := c.(interface{ SetSendWindow(int64) }); ok && opts.SendWindow != nil {
		w.SetSendWindow(opts.SendWindow())
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(2 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-mctx.Done():
					return
				case <-t.C:
					w.SetSendWindow(opts.SendWindow())
				}
			}
		}()
	}

	hello := func(h *streamv1.Hello) {
		h.MigrationId = id
		h.DestinationConfig = info.Config.Data
		h.DestinationHypervisor = info.Config.Hypervisor
		h.Name = info.Name
		h.Suspend = opts.Suspend
	}
	started := make(chan error, 1)
	cfg := pipeline.SourceConfig{
		Codecs: opts.Codecs, Policy: opts.Policy, PageStage: opts.PageStage, Kind: pipeline.KindQEMU,
		Name: info.Name, ExpectedLength: info.MemoryBytes, ReturnPath: qemu, Mode: opts.Mode, Hello: hello, History: opts.History,
		CheckAccept: func(acc *streamv1.Accept) error {
			if opts.Suspend && !acc.Suspend {
				return fmt.Errorf("destination host %q did not confirm that it will leave the VM paused (a dwcp without --suspend would run it): %w",
					acc.Destination, ErrSuspendUnsupported)
			}
			return nil
		},
		Accepted: func() {
			// The destination VM listens now: start QEMU's side.
			go qemu.accept()
			started <- hv.StartMigration(mctx, id, sock)
		},
	}
	type sendResult struct {
		sum pipeline.Summary
		err error
	}
	sent := make(chan sendResult, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		sum, err := pipeline.Send(mctx, qemu, c, cfg, opts.Progress)
		sent <- sendResult{sum, err}
	}()
	var sr sendResult
	select {
	case err := <-started:
		if err != nil {
			cancel()
			<-sent
			return res, fmt.Errorf("start migration: %w", err)
		}
		note("QEMU is migrating into DWCP")
		sr = <-sent
	case sr = <-sent:
	}
	streamDoneAt := time.Now()
	res.Pipeline = sr.sum
	if sr.err != nil {
		if mctx.Err() != nil && ctx.Err() == nil {
			mu.Lock()
			st := last
			mu.Unlock()
			return res, fmt.Errorf("migration did not finish within %s (QEMU: %s, %d MiB remaining, dirty rate %d pages/s, pass %d): %w",
				opts.MaxDuration, st.State, st.RemainingBytes>>20, st.DirtyPagesRate, st.DirtySyncCount, sr.err)
		}
		return res, fmt.Errorf("stream to destination: %w", sr.err)
	}
	// Every byte is verified at the destination; QEMU here has finished.
	st, err := waitState(mctx, hv, id, 30*time.Second)
	completedAt := time.Now()
	res.Source = st
	if err != nil {
		return res, err
	}
	if st.State != "completed" {
		return res, fmt.Errorf("source QEMU ended the migration %q: %s", st.State, st.Error)
	}
	result, err := recvResult(mctx, c)
	if err != nil {
		return res, err
	}
	paused := opts.Suspend && result.Paused && !result.Running
	if !result.Running && !paused {
		return res, fmt.Errorf("%w: %s", ErrDestinationFailed, result.Error)
	}
	runningAt := time.Now()
	res.DestinationPaused = paused
	if paused {
		note("destination VM loaded and paused")
	} else {
		note("destination VM running")
	}
	res.Destination = result.Vm
	mu.Lock()
	if !stopAt.IsZero() {
		res.Switchover = timeline(stopAt, completedAt, streamDoneAt, runningAt, result.RunningUnixNano)
		res.Downtime = res.Switchover.ResultReceived
		if d := res.Switchover.DestinationRunning; d > 0 {
			res.Downtime = d
		}
	}
	res.Passes = last.DirtySyncCount
	mu.Unlock()
	if res.Downtime == 0 || res.Downtime < st.Downtime {
		// No stop event was seen: QEMU's own figure is the lower bound.
		res.Downtime = st.Downtime
	}
	if _, err := hv.FinishMigration(ctx, id, false); err != nil {
		note("releasing the source VM failed: %v", err)
	}
	released = true
	res.Total = time.Since(start)
	return res, nil
}

// timeline places the switchover's steps after stopAt. The destination's
// clock is trusted only when it puts the VM's start between the stop and
// the arrival of the result that reports it: a skewed clock would
// otherwise shorten or lengthen the downtime.
func timeline(stopAt, completedAt, streamDoneAt, resultAt time.Time, destRunningUnixNano int64) Switchover {
	since := func(t time.Time) time.Duration { return max(t.Sub(stopAt), 0) }
	sw := Switchover{SourceCompleted: since(completedAt), StreamDone: since(streamDoneAt), ResultReceived: since(resultAt)}
	if destRunningUnixNano > 0 {
		at := time.Unix(0, destRunningUnixNano)
		if at.After(stopAt) && !at.After(resultAt) {
			sw.DestinationRunning = at.Sub(stopAt)
		}
	}
	return sw
}

// convergence notices a migration whose remaining data stops shrinking.
type convergence struct {
	best    uint64
	stalled int
	warned  bool
	pass    uint64
}

func (c *convergence) observe(st hypervisor.Status) string {
	if st.DirtySyncCount == c.pass || st.State != "active" {
		return ""
	}
	c.pass = st.DirtySyncCount
	if c.best == 0 || st.RemainingBytes < c.best*9/10 {
		c.best, c.stalled = st.RemainingBytes, 0
		return ""
	}
	c.stalled++
	if c.stalled >= 5 && !c.warned {
		c.warned = true
		return fmt.Sprintf("not converging: %d passes without progress, %d MiB remaining, guest dirties %d pages/s; auto-converge throttles the guest (cpu %d%%), the migration is cancelled if it has not finished in time",
			c.stalled, st.RemainingBytes>>20, st.DirtyPagesRate, st.CPUThrottlePercent)
	}
	return ""
}

// followRate keeps QEMU's max-bandwidth at the effective rate while the
// migration runs, changing it when it moved by more than 10 %. It looks
// twice a second: the first compression ratio of a stream can be 5 times
// the starting guess (a return trip with the page history), and checking
// every 2 s left QEMU at the guess for the first 2 s of a 5 s migration.
func followRate(ctx context.Context, hv hypervisor.Hypervisor, id string, p hypervisor.Params, rate func() uint64, note func(string, ...any)) {
	last := p.MaxBandwidth
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r := rate()
		if r == 0 || (r > last*9/10 && r < last*11/10) {
			continue
		}
		p.MaxBandwidth = r
		if err := hv.SetLimits(ctx, id, p); err != nil {
			if ctx.Err() == nil {
				note("setting QEMU's max-bandwidth failed: %v", err)
			}
			continue
		}
		last = r
	}
}
