package conformance

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// accelDataPaths are the two ways bulk bytes reach a plugin: the
// shared-memory data plane and the portable gRPC fallback. The binary
// suite runs the whole accelerator suite over each.
var accelDataPaths = []struct {
	name      string
	disableSH bool
}{{"shm", false}, {"grpc", true}}

// CheckAcceleratorBinary checks a built accelerator plugin binary through
// the plugin boundary: its `describe` output, its labels (an emulated
// plugin must say so in its name or summary), its fingerprint, and the
// whole CheckAccelerator suite over the shared-memory data plane and again
// over the gRPC fallback. The plugin inherits the test's environment.
func CheckAcceleratorBinary(ctx context.Context, path string, opts AccelOptions) Report {
	r := Report{Subject: fmt.Sprintf("accelerator binary %s", path)}
	if opts.Subject != "" {
		r.Subject = opts.Subject
	}
	b := &accelBinary{path: path, opts: opts}
	r.Add(runCheck(ctx, check{"describe", b.checkDescribe}))
	for _, dp := range accelDataPaths {
		run := &accelBinaryRun{accelBinary: b, dataPath: dp.name, disableSHM: dp.disableSH}
		r.Add(runCheck(ctx, check{dp.name + "/launch", run.checkLaunch}))
		if run.inst == nil {
			continue
		}
		for _, c := range run.checks() {
			c.name = dp.name + "/" + c.name
			r.Add(runCheck(ctx, c))
		}
		// The close check is skipped when ctx ends first; the process
		// must end all the same.
		_ = run.close()
	}
	return r
}

// TestAcceleratorBinary runs CheckAcceleratorBinary's checks as subtests
// of t: "describe", then "shm/..." and "grpc/...". Pass at most one
// AccelOptions.
func TestAcceleratorBinary(t *testing.T, path string, opts ...AccelOptions) {
	t.Helper()
	var o AccelOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	b := &accelBinary{path: path, opts: o}
	t.Run("describe", func(t *testing.T) { reportToT(t, runCheck(t.Context(), check{"describe", b.checkDescribe})) })
	for _, dp := range accelDataPaths {
		t.Run(dp.name, func(t *testing.T) {
			run := &accelBinaryRun{accelBinary: b, dataPath: dp.name, disableSHM: dp.disableSH}
			res := runCheck(t.Context(), check{"launch", run.checkLaunch})
			t.Run("launch", func(t *testing.T) { reportToT(t, res) })
			if run.inst == nil {
				return
			}
			// The close check normally ends the instance; this catches a
			// test stopped before it.
			defer run.close()
			runTests(t, run.checks())
		})
	}
}

type accelBinary struct {
	path string
	opts AccelOptions
	desc *sdk.Description // from `describe`, when it worked
}

func (b *accelBinary) checkDescribe(ctx context.Context, st *state) {
	d, err := plugin.DescribeBinary(ctx, b.path, nil)
	if err != nil {
		st.failf("%v", err)
		return
	}
	b.desc = &d
	if d.Kind != sdk.KindAccelerator {
		st.failf("describe says kind %q; an accelerator plugin must say %q", d.Kind, sdk.KindAccelerator)
	}
	if d.Version == "" {
		st.failf("describe gives no version: set ServeConfig.Version")
	}
	if !slices.Contains(d.ProtocolVersions, sdk.ProtocolVersion) {
		st.failf("describe lists protocol versions %v, not this SDK's %d", d.ProtocolVersions, sdk.ProtocolVersion)
	}
	st.notef("%s %q %s (SDK %s, protocols %v): %s", d.Kind, d.Name, d.Version, d.SDKVersion, d.ProtocolVersions, d.Summary)
}

// accelBinaryRun is one launched instance of the binary on one data path.
type accelBinaryRun struct {
	*accelBinary
	dataPath   string
	disableSHM bool
	inst       *plugin.Instance
	closed     bool
}

func (r *accelBinaryRun) stderr() string {
	if r.inst == nil {
		return ""
	}
	lines := r.inst.StderrTail()
	if len(lines) == 0 {
		return ""
	}
	return "\nplugin stderr (last lines):\n" + strings.Join(lines, "\n")
}

func (r *accelBinaryRun) checkLaunch(ctx context.Context, st *state) {
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: r.path, DisableSharedMemory: r.disableSHM})
	if err != nil {
		st.failf("launch %s (data path %s): %v", r.path, r.dataPath, err)
		return
	}
	r.inst = inst
	fp, err := inst.Fingerprint(ctx)
	if err != nil {
		st.failf("fingerprint: %v%s", err, r.stderr())
		return
	}
	st.notef("pid %d, protocol %d, data plane %s", inst.Pid(), inst.Protocol(), fp.DataPlane)
	switch {
	case r.disableSHM && fp.DataPlane != "grpc":
		st.failf("shared memory was disabled but the data plane is %q", fp.DataPlane)
	case !r.disableSHM && fp.DataPlane != "shm":
		st.notef("shared memory was offered but the data plane is %q: every call goes through the gRPC fallback", fp.DataPlane)
	}
}

func (r *accelBinaryRun) checks() []check {
	a, err := r.inst.Accelerator()
	if err != nil {
		return []check{{"accelerator", func(_ context.Context, st *state) {
			st.failf("the plugin is not usable as an accelerator: %v%s", err, r.stderr())
		}}, {"close", r.checkClose}}
	}
	suite, _ := newAccelSuite(a, r.opts)
	suite.remote = true
	cs := []check{{"fingerprint", r.checkFingerprint}}
	cs = append(cs, suite.checks()...)
	return append(cs, check{"close", r.checkClose})
}

// checkFingerprint checks what the host sees before it sends any data:
// health with a reason, and an emulated plugin named as one.
func (r *accelBinaryRun) checkFingerprint(ctx context.Context, st *state) {
	fp, err := r.inst.Fingerprint(ctx)
	if err != nil {
		st.failf("fingerprint: %v%s", err, r.stderr())
		return
	}
	if fp.Accelerator == nil {
		st.failf("the fingerprint carries no accelerator capabilities")
		return
	}
	h := fp.Health
	if h.Status != sdk.Healthy && strings.TrimSpace(h.Detail) == "" {
		st.failf("health is %s with an empty detail: say why, so an operator can act", h.Status)
	}
	rpc := r.inst.Description()
	if r.desc != nil && (rpc.Name != r.desc.Name || rpc.Version != r.desc.Version || rpc.Kind != r.desc.Kind) {
		st.failf("`describe` says %s %q %s but the running plugin says %s %q %s", r.desc.Kind, r.desc.Name, r.desc.Version, rpc.Kind, rpc.Name, rpc.Version)
	}
	if fp.Accelerator.Emulated {
		label := strings.ToLower(rpc.Name + " " + rpc.Summary)
		if !strings.Contains(label, "emulat") {
			st.failf("Capabilities().Emulated is set but neither the plugin name %q nor its summary %q says it is emulated: a stand-in for absent hardware must be named as one", rpc.Name, rpc.Summary)
		}
	}
	st.notef("health %s: %s; emulated %v", h.Status, h.Detail, fp.Accelerator.Emulated)
}

func (r *accelBinaryRun) close() error {
	if r.closed || r.inst == nil {
		return nil
	}
	r.closed = true
	return r.inst.Close()
}

func (r *accelBinaryRun) checkClose(_ context.Context, st *state) {
	if r.inst.Exited() {
		st.failf("the plugin process exited before Close%s", r.stderr())
	}
	if err := r.close(); err != nil {
		st.failf("Close: %v%s", err, r.stderr())
	}
}
