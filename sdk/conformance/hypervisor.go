package conformance

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// HypervisorOptions tune CheckHypervisor.
type HypervisorOptions struct {
	// Subject overrides the report's subject line.
	Subject string
	// Timeout bounds each call (default 10 s).
	Timeout time.Duration
}

// CheckHypervisor checks the parts of the hypervisor contract that hold
// without a VM to migrate: capabilities are described, listing works, and
// every call naming a VM or migration that does not exist fails with
// sdk.ErrNotFound (never a panic, a hang or a vague error), including the
// optional FinishMigrationPaused when the plugin offers it. Live migration
// itself needs real VMs and is tested by the driver's own end-to-end tests.
func CheckHypervisor(ctx context.Context, h hypervisor.Hypervisor, opts HypervisorOptions) Report {
	subject := opts.Subject
	if subject == "" {
		subject = "hypervisor (in-process)"
	}
	return runAll(ctx, subject, hypervisorChecks(h, opts))
}

// TestHypervisor runs CheckHypervisor's checks as subtests.
func TestHypervisor(t *testing.T, h hypervisor.Hypervisor, opts ...HypervisorOptions) {
	t.Helper()
	var o HypervisorOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	runTests(t, hypervisorChecks(h, o))
}

// CheckHypervisorBinary launches a hypervisor plugin binary and runs the
// same checks through the plugin boundary.
func CheckHypervisorBinary(ctx context.Context, path string, opts HypervisorOptions) Report {
	subject := opts.Subject
	if subject == "" {
		subject = "hypervisor binary " + path
	}
	r := Report{Subject: subject}
	var inst *plugin.Instance
	r.Add(runCheck(ctx, check{"launch", func(ctx context.Context, s *state) {
		var err error
		inst, err = plugin.Launch(ctx, plugin.LaunchConfig{Path: path})
		if err != nil {
			s.failf("launch: %v", err)
			return
		}
		if d := inst.Description(); d.Kind != sdk.KindHypervisor {
			s.failf("plugin describes itself as a %q plugin, want %q", d.Kind, sdk.KindHypervisor)
		}
	}}))
	if inst == nil {
		return r
	}
	defer inst.Close()
	h, err := inst.Hypervisor()
	if err != nil {
		r.Add(Result{Name: "dispense", Status: StatusFail, Message: err.Error()})
		return r
	}
	for _, res := range runAll(ctx, subject, hypervisorChecks(h, opts)).Results {
		r.Add(res)
	}
	return r
}

func hypervisorChecks(h hypervisor.Hypervisor, opts HypervisorOptions) []check {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	call := func(ctx context.Context) (context.Context, context.CancelFunc) {
		return context.WithTimeout(ctx, timeout)
	}
	const ghostVM = "/nonexistent/dwcp-conformance-vm.qmp"
	const ghostID = "dwcp-conformance-no-such-migration"
	notFound := func(name string, f func(ctx context.Context) error) check {
		return check{"not-found/" + name, func(ctx context.Context, s *state) {
			ctx, cancel := call(ctx)
			defer cancel()
			err := f(ctx)
			switch {
			case err == nil:
				s.failf("%s on something that does not exist succeeded; want an error wrapping sdk.ErrNotFound", name)
			case ctx.Err() != nil:
				s.failf("%s did not answer within %s", name, timeout)
			case !errIsAny(err, sdk.ErrNotFound):
				s.failf("%s: %v; want an error wrapping sdk.ErrNotFound so the host can tell it apart", name, err)
			}
		}}
	}
	return []check{
		{"capabilities", func(ctx context.Context, s *state) {
			ctx, cancel := call(ctx)
			defer cancel()
			caps, err := h.Capabilities(ctx)
			if err != nil {
				if errIsAny(err, sdk.ErrUnavailable) {
					s.skipf("hypervisor unavailable here: %v", err)
					return
				}
				s.failf("Capabilities: %v", err)
				return
			}
			if caps.Hypervisor == "" {
				s.failf("Capabilities().Hypervisor is empty; name the hypervisor (e.g. \"qemu\")")
			}
			s.notef("%s %s, %d migration capabilities", caps.Hypervisor, caps.Version, len(caps.MigrationCapabilities))
		}},
		{"list", func(ctx context.Context, s *state) {
			ctx, cancel := call(ctx)
			defer cancel()
			vms, err := h.ListVMs(ctx)
			if err != nil && !errIsAny(err, sdk.ErrUnavailable, sdk.ErrUnsupported) {
				s.failf("ListVMs: %v; want a list, or sdk.ErrUnavailable/ErrUnsupported", err)
				return
			}
			for _, v := range vms {
				if v.Ref.Address == "" {
					s.failf("ListVMs returned a VM with an empty address: %+v", v)
				}
			}
			s.notef("%d VMs", len(vms))
		}},
		notFound("inspect", func(ctx context.Context) error {
			_, err := h.InspectVM(ctx, hypervisor.VMRef{Address: ghostVM})
			return err
		}),
		notFound("prepare-source", func(ctx context.Context) error {
			_, _, err := h.PrepareSource(ctx, hypervisor.VMRef{Address: ghostVM}, hypervisor.Params{})
			return err
		}),
		notFound("start", func(ctx context.Context) error { return h.StartMigration(ctx, ghostID, "/nonexistent.sock") }),
		notFound("query", func(ctx context.Context) error {
			_, err := h.QueryMigration(ctx, ghostID)
			return err
		}),
		notFound("set-limits", func(ctx context.Context) error {
			return h.SetLimits(ctx, ghostID, hypervisor.Params{MaxBandwidth: 1 << 20})
		}),
		notFound("cancel", func(ctx context.Context) error { return h.CancelMigration(ctx, ghostID) }),
		notFound("finish", func(ctx context.Context) error {
			_, err := h.FinishMigration(ctx, ghostID, false)
			return err
		}),
		{"not-found/finish-paused", func(ctx context.Context, s *state) {
			ctx, cancel := call(ctx)
			defer cancel()
			can, err := hypervisor.CanFinishPaused(ctx, h)
			switch {
			case err != nil && errIsAny(err, sdk.ErrUnavailable):
				s.skipf("hypervisor unavailable here: %v", err)
				return
			case err != nil:
				s.failf("CanFinishPaused: %v", err)
				return
			case !can:
				s.skipf("FinishMigrationPaused not offered (optional: hypervisor.PausedFinisher)")
				return
			}
			_, err = h.(hypervisor.PausedFinisher).FinishMigrationPaused(ctx, ghostID)
			switch {
			case err == nil:
				s.failf("FinishMigrationPaused of a migration that does not exist succeeded; want an error wrapping sdk.ErrNotFound")
			case ctx.Err() != nil:
				s.failf("FinishMigrationPaused did not answer within %s", timeout)
			case !errIsAny(err, sdk.ErrNotFound):
				s.failf("FinishMigrationPaused: %v; want an error wrapping sdk.ErrNotFound so the host can tell it apart", err)
			}
		}},
		notFound("watch", func(ctx context.Context) error {
			events, err := h.WatchMigration(ctx, ghostID)
			if err != nil {
				return err
			}
			// A stream-based implementation may report the error by
			// closing the channel at once; draining proves it ends.
			for range events {
			}
			return fmt.Errorf("watch of an unknown migration returned a stream instead of an error")
		}),
	}
}
