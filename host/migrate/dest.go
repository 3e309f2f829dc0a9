package migrate

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/dwcp/dwcp/host/internal/pb/streamv1"
	"github.com/dwcp/dwcp/host/pipeline"
	"github.com/dwcp/dwcp/sdk/hypervisor"
)

// DestOptions configure the destination side of migrations.
type DestOptions struct {
	pipeline.DestConfig
	// Hypervisor returns the plugin for a VM config's hypervisor name.
	Hypervisor func(name string) (hypervisor.Hypervisor, error)
	// Params go to the destination hypervisor.
	Params hypervisor.Params
	// SocketDir holds the unix socket the destination QEMU reads from.
	SocketDir string
	// RawOutput handles a stream that is not a migration (a file): it
	// returns where the bytes go, and is told the outcome.
	RawOutput func(ctx context.Context, h *streamv1.Hello) (io.Writer, func(ok bool) error, error)
	OnEvent   func(string)
}

// DestResult describes what a destination session did.
type DestResult struct {
	Hello    *streamv1.Hello
	Pipeline pipeline.Summary
	// VM is the destination VM's address when a migration ran.
	VM     string
	Status hypervisor.Status
	// Paused: the migration completed and, as the hello asked (suspend),
	// the VM was left loaded and paused instead of resumed.
	Paused bool
}

// Destination serves one session: a migration (the hello carries a
// migration id) or a plain stream. For a migration it prepares the VM,
// feeds it only verified bytes, waits for the hypervisor to finish
// loading, resumes the VM (or, when the hello asks for suspend, leaves it
// paused) and reports to the source; on any failure it discards the VM it
// prepared and tells the source.
func Destination(ctx context.Context, c Conn, opts DestOptions) (res DestResult, err error) {
	note := func(format string, args ...any) {
		if opts.OnEvent != nil {
			opts.OnEvent(fmt.Sprintf(format, args...))
		}
	}
	var hv hypervisor.Hypervisor
	var id string
	var qemu net.Conn
	var finishRaw func(bool) error
	var cleanup func()
	var suspend bool
	defer func() {
		if qemu != nil {
			qemu.Close()
		}
		if cleanup != nil {
			cleanup()
		}
	}()
	cfg := opts.DestConfig
	cfg.Accept = func(ctx context.Context, h *streamv1.Hello) (io.Writer, io.Reader, error) {
		if h.MigrationId == "" {
			if opts.RawOutput == nil {
				return nil, nil, fmt.Errorf("this host accepts migrations only")
			}
			w, finish, err := opts.RawOutput(ctx, h)
			finishRaw = finish
			return w, nil, err
		}
		var err error
		hvName := h.DestinationHypervisor
		if hvName == "" {
			return nil, nil, fmt.Errorf("migration %s names no hypervisor", h.MigrationId)
		}
		if opts.Hypervisor == nil {
			return nil, nil, fmt.Errorf("no hypervisor plugin on this host")
		}
		if hv, err = opts.Hypervisor(hvName); err != nil {
			return nil, nil, err
		}
		if h.Suspend {
			// Checked before any VM exists: a plugin that cannot leave
			// the VM paused must not get this migration at all.
			can, err := hypervisor.CanFinishPaused(ctx, hv)
			if err != nil {
				return nil, nil, fmt.Errorf("migration %s asks to leave the VM paused: %w", h.MigrationId, err)
			}
			if !can {
				return nil, nil, fmt.Errorf("migration %s asks to leave the VM paused (suspend), but the %s hypervisor plugin on this host cannot: %w",
					h.MigrationId, hvName, ErrSuspendUnsupported)
			}
			suspend = true
		}
		var sock string
		if sock, cleanup, err = endpoint(opts.SocketDir, "in.sock"); err != nil {
			return nil, nil, err
		}
		var ref hypervisor.VMRef
		id, ref, err = hv.PrepareDestination(ctx, hypervisor.DestinationRequest{
			Config:           hypervisor.VMConfig{Hypervisor: hvName, Data: h.DestinationConfig},
			IncomingEndpoint: sock,
			Params:           opts.Params,
		})
		if err != nil {
			return nil, nil, fmt.Errorf("prepare destination VM: %w", err)
		}
		res.VM = ref.Address
		note("destination VM %s waits for the stream", ref.Address)
		if qemu, err = net.Dial("unix", sock); err != nil {
			return nil, nil, fmt.Errorf("connect to the destination QEMU at %s: %w", sock, err)
		}
		return qemu, qemu, nil
	}
	// Confirming suspend in the accept is what lets the source go on: a
	// destination that does not know the field never confirms it.
	cfg.Accepting = func(acc *streamv1.Accept) { acc.Suspend = suspend }
	hello, sum, err := pipeline.Receive(ctx, c, cfg, nil)
	res.Hello, res.Pipeline = hello, sum
	if hello == nil || hello.MigrationId == "" {
		if finishRaw != nil {
			if ferr := finishRaw(err == nil); err == nil {
				err = ferr
			}
		}
		return res, err
	}
	fail := func(cause error) (DestResult, error) {
		if hv != nil && id != "" {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if cerr := hv.CancelMigration(cctx, id); cerr != nil {
				cause = fmt.Errorf("%w; discarding the destination VM failed: %v", cause, cerr)
			}
			cancel()
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = sendResult(rctx, c, &streamv1.MigrationResult{Running: false, Error: cause.Error()})
		cancel()
		return res, cause
	}
	if err != nil {
		return fail(err)
	}
	// Every byte is verified and written; let the hypervisor finish
	// loading, then run the VM.
	st, err := waitState(ctx, hv, id, 60*time.Second)
	res.Status = st
	if err != nil {
		return fail(fmt.Errorf("destination hypervisor: %w", err))
	}
	if st.State != "completed" {
		return fail(fmt.Errorf("destination hypervisor ended the migration %q: %s", st.State, st.Error))
	}
	if suspend {
		if st, err = hv.(hypervisor.PausedFinisher).FinishMigrationPaused(ctx, id); err != nil {
			return fail(fmt.Errorf("leave destination VM paused: %w", err))
		}
		res.Status, res.Paused = st, true
		note("destination VM %s loaded and left paused, as the source asked", res.VM)
		if err := sendResult(ctx, c, &streamv1.MigrationResult{Paused: true, Vm: res.VM}); err != nil {
			// The source resumes its own copy without this message; ours
			// is paused and stays so until someone continues it.
			return res, fmt.Errorf("report to the source: %w (the paused VM %s here must not be continued: the source resumes its own)", err, res.VM)
		}
		return res, nil
	}
	if st, err = hv.FinishMigration(ctx, id, true); err != nil {
		return fail(fmt.Errorf("resume destination VM: %w", err))
	}
	res.Status = st
	note("destination VM %s running", res.VM)
	if err := sendResult(ctx, c, &streamv1.MigrationResult{Running: true, Vm: res.VM, RunningUnixNano: time.Now().UnixNano()}); err != nil {
		// The VM runs here; the source will not release its copy without
		// this message and resumes its own. Stop ours to avoid two.
		return fail(fmt.Errorf("report to the source: %w", err))
	}
	return res, nil
}
