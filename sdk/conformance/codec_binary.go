package conformance

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/plugin"
)

// dataPath is one way bulk bytes cross the plugin boundary.
type dataPath struct {
	name      string // result prefix and subtest name
	plane     string // Fingerprint.DataPlane the launch must end up with
	disableSM bool
}

var dataPaths = []dataPath{
	{name: "shm", plane: "shm"},
	{name: "grpc", plane: "grpc", disableSM: true},
}

// CheckCodecBinary runs the codec suite through the plugin boundary: it
// checks `PATH describe`, then launches the binary with plugin.Launch twice,
// once on the shared-memory data path and once with DisableSharedMemory
// (the gRPC fallback), and runs every codec check against the remote codec
// each time. Results are named "describe", "shm/..." and "grpc/...".
func CheckCodecBinary(ctx context.Context, path string, opts CodecOptions) Report {
	rep := Report{Subject: fmt.Sprintf("codec plugin %s", path)}
	if opts.Subject == "" {
		opts.Subject = rep.Subject
	}
	rep.Add(runCheck(ctx, check{"describe", func(ctx context.Context, st *state) { checkDescribe(ctx, st, path) }}))
	for _, dp := range dataPaths {
		var inst *plugin.Instance
		var remote codec.Codec
		launch := runCheck(ctx, check{"launch", func(ctx context.Context, st *state) {
			inst, remote = launchCodec(ctx, st, path, dp)
		}})
		sub := Report{Results: []Result{launch}}
		if remote != nil {
			for _, c := range remoteChecks(inst, remote, opts) {
				sub.Add(runCheck(ctx, c))
			}
		}
		if inst != nil {
			sub.Add(runCheck(context.WithoutCancel(ctx), check{"close", func(_ context.Context, st *state) {
				closeInstance(st, inst, !sub.OK())
			}}))
		}
		rep.Merge(dp.name, sub)
	}
	return rep
}

// TestCodecBinary is CheckCodecBinary as subtests of t: "describe", then
// "shm" and "grpc", each holding the codec checks. Pass at most one
// CodecOptions.
func TestCodecBinary(t *testing.T, path string, opts ...CodecOptions) {
	t.Helper()
	o := testOptions(opts)
	t.Run("describe", func(t *testing.T) {
		reportToT(t, runCheck(t.Context(), check{"describe", func(ctx context.Context, st *state) { checkDescribe(ctx, st, path) }}))
	})
	for _, dp := range dataPaths {
		t.Run(dp.name, func(t *testing.T) {
			var inst *plugin.Instance
			var remote codec.Codec
			res := runCheck(t.Context(), check{"launch", func(ctx context.Context, st *state) {
				inst, remote = launchCodec(ctx, st, path, dp)
			}})
			if inst != nil {
				t.Cleanup(func() {
					res := runCheck(context.Background(), check{"close", func(_ context.Context, st *state) {
						closeInstance(st, inst, t.Failed())
					}})
					if res.Status == StatusFail {
						t.Errorf("close: %s", res.Message)
					} else if res.Message != "" {
						t.Logf("close: %s", res.Message)
					}
				})
			}
			switch res.Status {
			case StatusFail:
				t.Fatalf("launch: %s", res.Message)
			case StatusSkip:
				t.Skipf("launch: %s", res.Message)
			}
			if res.Message != "" {
				t.Logf("launch: %s", res.Message)
			}
			runTests(t, remoteChecks(inst, remote, o))
		})
	}
}

func checkDescribe(ctx context.Context, st *state, path string) {
	d, err := plugin.DescribeBinary(ctx, path, nil)
	if err != nil {
		st.failf("`%s describe` failed: %v\n(plugin.Serve answers it; check that main calls plugin.Serve before printing anything)", path, err)
		return
	}
	if d.Kind != sdk.KindCodec {
		st.failf("`describe` reports kind %q, want %q: set ServeConfig.Codec", d.Kind, sdk.KindCodec)
	}
	if d.Version == "" {
		st.failf("`describe` reports no version: set ServeConfig.Version")
	}
	st.notef("%s %s (kind %s, protocols %v, SDK %s): %s", d.Name, d.Version, d.Kind, d.ProtocolVersions, d.SDKVersion, d.Summary)
}

// launchCodec starts the plugin on one data path and returns it with its
// remote codec; on failure it records why and returns what must be closed.
func launchCodec(ctx context.Context, st *state, path string, dp dataPath) (*plugin.Instance, codec.Codec) {
	inst, err := plugin.Launch(ctx, plugin.LaunchConfig{Path: path, DisableSharedMemory: dp.disableSM})
	if err != nil {
		st.failf("plugin.Launch(%s): %v", path, err)
		return nil, nil
	}
	d := inst.Description()
	if d.Kind != sdk.KindCodec {
		st.failf("plugin reports kind %q over RPC, want %q", d.Kind, sdk.KindCodec)
		return inst, nil
	}
	fp, err := inst.Fingerprint(ctx)
	if err != nil {
		st.failf("Fingerprint: %v", err)
		return inst, nil
	}
	if fp.DataPlane != dp.plane {
		if dp.plane == "shm" && runtime.GOOS != "linux" {
			st.skipf("no shared-memory data plane on %s; the gRPC run covers this plugin", runtime.GOOS)
			return inst, nil
		}
		st.failf("asked for the %s data path, got %q: the plugin did not attach the shared-memory data plane (is it built with this SDK's plugin.Serve?)", dp.plane, fp.DataPlane)
		return inst, nil
	}
	if fp.Health.Status != sdk.Healthy {
		st.notef("plugin health: %s %s", fp.Health.Status, fp.Health.Detail)
	}
	c, err := inst.Codec()
	if err != nil {
		st.failf("Instance.Codec: %v", err)
		return inst, nil
	}
	st.notef("%s %s on the %s data path (pid %d, protocol %d)", d.Name, d.Version, fp.DataPlane, inst.Pid(), inst.Protocol())
	return inst, c
}

// closeInstance stops the plugin; after failures it attaches the plugin's
// last stderr lines, which usually say what went wrong inside it.
func closeInstance(st *state, inst *plugin.Instance, failed bool) {
	exited := inst.Exited()
	tail := inst.StderrTail()
	if err := inst.Close(); err != nil {
		st.failf("Close: %v", err)
	}
	if exited {
		st.failf("the plugin process had already exited before Close: it crashed during the run")
	}
	for _, l := range tail {
		if strings.Contains(l, "panic") {
			st.failf("the plugin logged a panic: %s", l)
			break
		}
	}
	if (failed || st.failed()) && len(tail) > 0 {
		st.notef("plugin's last stderr lines:\n  | %s", strings.Join(tail, "\n  | "))
		if st.failed() {
			st.failf("plugin's last stderr lines:\n  | %s", strings.Join(tail, "\n  | "))
		}
	}
}

// remoteChecks is the codec suite for a launched plugin. Once the plugin
// process has died, the checks still to come are skipped and repeated
// calls report the crash in one short line: the check that crashed it
// carries the plugin's last words, and the verdict stays FAIL.
func remoteChecks(inst *plugin.Instance, remote codec.Codec, opts CodecOptions) []check {
	suite, _ := newCodecSuite(&crashOnce{Codec: remote}, opts)
	cs := suite.checks()
	for i := range cs {
		run := cs[i].run
		cs[i].run = func(ctx context.Context, st *state) {
			if inst.Exited() {
				st.skipf("the plugin process has exited: it crashed in an earlier check")
				return
			}
			run(ctx, st)
		}
	}
	return cs
}

var errGone = fmt.Errorf("the plugin process is gone (its crash is reported above): %w", sdk.ErrPluginCrashed)

// crashOnce passes calls through until one reports a crashed plugin, then
// answers errGone at once.
type crashOnce struct {
	codec.Codec
	crashed atomic.Bool
}

func (c *crashOnce) call(dst []byte, f func() ([]byte, error)) ([]byte, error) {
	if c.crashed.Load() {
		return dst, errGone
	}
	out, err := f()
	if errors.Is(err, sdk.ErrPluginCrashed) && c.crashed.Swap(true) {
		return out, errGone
	}
	return out, err
}

func (c *crashOnce) Encode(dst, src []byte, level int) ([]byte, error) {
	return c.call(dst, func() ([]byte, error) { return c.Codec.Encode(dst, src, level) })
}

func (c *crashOnce) Decode(dst, src []byte, maxSize int) ([]byte, error) {
	return c.call(dst, func() ([]byte, error) { return c.Codec.Decode(dst, src, maxSize) })
}
