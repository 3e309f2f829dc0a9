package plugin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/dwcp/dwcp/sdk"
	"github.com/dwcp/dwcp/sdk/accel"
	"github.com/dwcp/dwcp/sdk/codec"
	"github.com/dwcp/dwcp/sdk/hypervisor"
	pb "github.com/dwcp/dwcp/sdk/internal/pb/pluginv1"
	"github.com/dwcp/dwcp/sdk/internal/shm"
	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// SupportedProtocols lists the plugin protocol majors this host side
// speaks, newest last.
var SupportedProtocols = []int{sdk.ProtocolVersion}

// ErrIncompatible means a plugin speaks no protocol version the host does.
var ErrIncompatible = errors.New("no common plugin protocol version")

// LaunchConfig says how to start a plugin binary.
type LaunchConfig struct {
	// Path of the binary.
	Path string
	// SHA256, when set, pins the binary: go-plugin refuses to run a file
	// whose digest differs.
	SHA256 []byte
	// Stderr receives a copy of everything the plugin writes to stderr.
	Stderr io.Writer
	// Logger receives the plugin's hclog lines, named after the plugin.
	Logger hclog.Logger
	// DisableSharedMemory forces the portable gRPC data path.
	DisableSharedMemory bool
	// CallTimeout bounds each codec or accelerator call (default 60 s), so
	// that a hung plugin cannot hang the host.
	CallTimeout time.Duration
	// StartTimeout bounds the handshake (default 20 s).
	StartTimeout time.Duration
}

// Fingerprint is the second stage of a fingerprint: typed capabilities and
// health. Exactly one of Codec, Accelerator, Hypervisor is set.
type Fingerprint struct {
	Health      sdk.Health
	DataPlane   string
	Codec       *codec.Capabilities
	Accelerator *accel.Capabilities
	Hypervisor  *hypervisor.Capabilities
}

// Instance is one running plugin process.
type Instance struct {
	path        string
	desc        sdk.Description
	protocol    int
	client      *goplugin.Client
	conn        *grpc.ClientConn
	info        pb.PluginInfoClient
	dp          *shm.Client
	tail        *stderrTail
	callTimeout time.Duration
	fp          Fingerprint
	buffers     bufferPool // private memory of codec Buffers without a slot
}

// DescribeBinary runs the first, cheap fingerprint stage: `PATH describe`,
// with no RPC. When sum is set the file's SHA-256 must match first.
func DescribeBinary(ctx context.Context, path string, sum []byte) (sdk.Description, error) {
	var desc sdk.Description
	if sum != nil {
		got, err := FileSHA256(path)
		if err != nil {
			return desc, err
		}
		if !bytes.Equal(got, sum) {
			return desc, fmt.Errorf("plugin %s: SHA-256 %x does not match the pinned %x: refusing to run it", path, got, sum)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "describe")
	var out, errOut limitedBuffer
	out.limit, errOut.limit = 64<<10, 8<<10
	cmd.Stdout, cmd.Stderr = &out, &errOut
	killWithParent(cmd)
	if err := cmd.Run(); err != nil {
		return desc, fmt.Errorf("plugin %s describe: %w (stderr: %s)", path, err, strings.TrimSpace(errOut.String()))
	}
	if err := json.Unmarshal(out.Bytes(), &desc); err != nil {
		return desc, fmt.Errorf("plugin %s describe: not a DWCP plugin description: %w", path, err)
	}
	switch {
	case desc.Name == "":
		return desc, fmt.Errorf("plugin %s describe: empty name", path)
	case desc.Kind != sdk.KindCodec && desc.Kind != sdk.KindAccelerator && desc.Kind != sdk.KindHypervisor:
		return desc, fmt.Errorf("plugin %s describe: unknown kind %q", path, desc.Kind)
	case len(desc.ProtocolVersions) == 0:
		return desc, fmt.Errorf("plugin %s describe: no protocol versions", path)
	}
	return desc, nil
}

// Negotiate returns the highest protocol version both lists contain.
func Negotiate(plugin, host []int) (int, error) {
	best := -1
	for _, v := range plugin {
		if slices.Contains(host, v) && v > best {
			best = v
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("%w: plugin speaks %v, host speaks %v", ErrIncompatible, plugin, host)
	}
	return best, nil
}

// FileSHA256 returns the SHA-256 of a file.
func FileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hash plugin: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hash plugin %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// Launch starts the plugin binary, completes the handshake (AutoMTLS, the
// negotiated protocol version), describes and fingerprints it, and attaches
// the shared-memory data plane for codecs and accelerators unless disabled
// or unavailable (then bulk bytes use the gRPC fallback).
func Launch(ctx context.Context, cfg LaunchConfig) (*Instance, error) {
	inst := &Instance{path: cfg.Path, tail: newStderrTail(40), callTimeout: cfg.CallTimeout}
	if inst.callTimeout <= 0 {
		inst.callTimeout = 60 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	cmd := exec.Command(cfg.Path)
	killWithParent(cmd)
	var hostEnd *os.File
	if !cfg.DisableSharedMemory {
		h, p, err := shm.Pair()
		if err == nil {
			hostEnd = h
			cmd.ExtraFiles = []*os.File{p}
			cmd.Env = append(os.Environ(), dataPlaneEnv+"=3")
			defer p.Close()
		}
	}
	closeHostEnd := func() {
		if hostEnd != nil {
			_ = hostEnd.Close()
		}
	}
	var stderr io.Writer = inst.tail
	if cfg.Stderr != nil {
		stderr = io.MultiWriter(inst.tail, cfg.Stderr)
	}
	versioned := map[int]goplugin.PluginSet{}
	for _, v := range SupportedProtocols {
		versioned[v] = goplugin.PluginSet{pluginName: &grpcPlugin{}}
	}
	cc := &goplugin.ClientConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: versioned,
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           logger,
		Stderr:           stderr,
		// After Serve, go-plugin moves the plugin's os.Stdout and os.Stderr
		// onto its stdio stream; without these its prints would be lost.
		SyncStdout:   stderr,
		SyncStderr:   stderr,
		StartTimeout: cfg.StartTimeout,
	}
	if cc.StartTimeout <= 0 {
		cc.StartTimeout = 20 * time.Second
	}
	if cfg.SHA256 != nil {
		cc.SecureConfig = &goplugin.SecureConfig{Checksum: cfg.SHA256, Hash: sha256.New()}
	}
	inst.client = goplugin.NewClient(cc)
	fail := func(op string, err error) (*Instance, error) {
		closeHostEnd()
		inst.client.Kill()
		return nil, inst.annotate(op, err)
	}
	rpc, err := inst.client.Client()
	if err != nil {
		return fail("start", err)
	}
	raw, err := rpc.Dispense(pluginName)
	if err != nil {
		return fail("dispense", err)
	}
	conn, ok := raw.(*grpc.ClientConn)
	if !ok {
		return fail("dispense", fmt.Errorf("unexpected client type %T", raw))
	}
	inst.conn = conn
	inst.protocol = inst.client.NegotiatedVersion()
	inst.info = pb.NewPluginInfoClient(conn)

	d, err := inst.info.Describe(ctx, &pb.DescribeRequest{})
	if err != nil {
		return fail("describe", err)
	}
	inst.desc = sdk.Description{
		Kind:       kindFromPB(d.Kind),
		Name:       d.Name,
		Version:    d.Version,
		SDKVersion: d.SdkVersion,
		Summary:    d.Description,
	}
	for _, v := range d.ProtocolVersions {
		inst.desc.ProtocolVersions = append(inst.desc.ProtocolVersions, int(v))
	}
	if inst.desc.Kind == "" {
		return fail("describe", fmt.Errorf("plugin reports unknown kind %v", d.Kind))
	}
	if hostEnd != nil && (inst.desc.Kind == sdk.KindCodec || inst.desc.Kind == sdk.KindAccelerator) {
		// Slots take a whole pipeline batch (up to 2 MiB of stream plus
		// page records): a batch that does not fit goes the slow gRPC way
		// (measured: the datacenter pipeline on a real stream ran 4x
		// slower with 1 MiB slots). Half the slots can be leased
		// (codec.Leaser): the pipeline holds a leased Buffer from the
		// batch being built until its frame is made, and on the
		// destination from decode until reassembly, so a session keeps
		// several out at once per direction; the other half stay for
		// plain calls. Only touched pages of the memfd take memory, and
		// slots are reused most recently freed first.
		dp, err := shm.NewClient(ctx, hostEnd, shm.ClientOptions{Slots: 16, SlotInput: 4 << 20, Leases: 8})
		if err != nil {
			logger.Warn("shared-memory data plane unavailable; using gRPC fallback", "plugin", inst.desc.Name, "error", err)
			closeHostEnd()
		} else {
			inst.dp = dp
		}
	} else {
		closeHostEnd()
	}
	if inst.fp, err = inst.fetchFingerprint(ctx); err != nil {
		if inst.dp != nil {
			_ = inst.dp.Close()
		}
		inst.client.Kill()
		return nil, err
	}
	return inst, nil
}

func (i *Instance) fetchFingerprint(ctx context.Context) (Fingerprint, error) {
	resp, err := i.info.Fingerprint(ctx, &pb.FingerprintRequest{})
	if err != nil {
		return Fingerprint{}, i.annotate("fingerprint", err)
	}
	fp := Fingerprint{
		Health:    sdk.Health{Status: healthFromPB(resp.Health), Detail: resp.HealthDetail},
		DataPlane: "grpc",
	}
	if i.dp != nil {
		fp.DataPlane = "shm"
	}
	switch c := resp.Capabilities.(type) {
	case *pb.FingerprintResponse_Codec:
		caps := codecCapsFromPB(c.Codec)
		fp.Codec = &caps
	case *pb.FingerprintResponse_Accel:
		caps := accelCapsFromPB(c.Accel)
		fp.Accelerator = &caps
	case *pb.FingerprintResponse_Hypervisor:
		caps := hvCapsFromPB(c.Hypervisor)
		fp.Hypervisor = &caps
	}
	return fp, nil
}

// Description is what the plugin said about itself over RPC.
func (i *Instance) Description() sdk.Description { return i.desc }

// Protocol is the negotiated protocol major version.
func (i *Instance) Protocol() int { return i.protocol }

// Fingerprint returns fresh capabilities and health.
func (i *Instance) Fingerprint(ctx context.Context) (Fingerprint, error) {
	fp, err := i.fetchFingerprint(ctx)
	if err == nil {
		i.fp = fp
	}
	return fp, err
}

// Exited reports whether the plugin process has ended.
func (i *Instance) Exited() bool { return i.client.Exited() }

// Pid returns the plugin's process id, or 0.
func (i *Instance) Pid() int {
	if rc := i.client.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// StderrTail returns the plugin's last stderr lines.
func (i *Instance) StderrTail() []string { return i.tail.Lines() }

// Close stops the plugin (gracefully, then by force) and releases the data
// plane.
func (i *Instance) Close() error {
	var err error
	if i.dp != nil {
		err = i.dp.Close()
	}
	i.client.Kill()
	return err
}

// Codec returns the plugin as a codec.Codec.
func (i *Instance) Codec() (codec.Codec, error) {
	if i.fp.Codec == nil {
		return nil, fmt.Errorf("plugin %s is a %s, not a codec: %w", i.desc.Name, i.desc.Kind, sdk.ErrUnsupported)
	}
	return &remoteCodec{inst: i, client: pb.NewCodecClient(i.conn), caps: *i.fp.Codec}, nil
}

// Accelerator returns the plugin as an accel.Accelerator.
func (i *Instance) Accelerator() (accel.Accelerator, error) {
	if i.fp.Accelerator == nil {
		return nil, fmt.Errorf("plugin %s is a %s, not an accelerator: %w", i.desc.Name, i.desc.Kind, sdk.ErrUnsupported)
	}
	return &remoteAccel{inst: i, client: pb.NewAcceleratorClient(i.conn), caps: *i.fp.Accelerator}, nil
}

// Hypervisor returns the plugin as a hypervisor.Hypervisor.
func (i *Instance) Hypervisor() (hypervisor.Hypervisor, error) {
	if i.fp.Hypervisor == nil {
		return nil, fmt.Errorf("plugin %s is a %s, not a hypervisor driver: %w", i.desc.Name, i.desc.Kind, sdk.ErrUnsupported)
	}
	return &remoteHypervisor{inst: i, client: pb.NewHypervisorClient(i.conn)}, nil
}

// CrashError reports a plugin process that died during a call.
type CrashError struct {
	Plugin string
	Op     string
	Cause  error
	Stderr []string
}

func (e *CrashError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plugin %s crashed during %s: %v", e.Plugin, e.Op, e.Cause)
	if len(e.Stderr) > 0 {
		b.WriteString("\nplugin's last stderr lines:")
		for _, l := range e.Stderr {
			b.WriteString("\n  | ")
			b.WriteString(l)
		}
	}
	return b.String()
}

func (e *CrashError) Unwrap() []error { return []error{sdk.ErrPluginCrashed, e.Cause} }

// annotate turns any error from a call into what the host should see: the
// plugin's own error with its sentinel, a CrashError when the process died,
// or the transport error with context.
func (i *Instance) annotate(op string, err error) error {
	if err == nil {
		return nil
	}
	name := i.desc.Name
	if name == "" {
		name = i.path
	}
	var re *shm.RemoteError
	if errors.As(err, &re) {
		return newRemoteError(name, pb.ErrorCode(re.Code), re.Message)
	}
	if converted := fromStatus(name, err); converted != err {
		return converted
	}
	if i.waitExited(time.Second) {
		return &CrashError{Plugin: name, Op: op, Cause: err, Stderr: i.tail.Lines()}
	}
	return fmt.Errorf("plugin %s: %s: %w", name, op, err)
}

// waitExited gives a dying plugin a moment to be reaped, so that a broken
// connection is reported as a crash rather than a transport error.
func (i *Instance) waitExited(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if i.client.Exited() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// limitedBuffer keeps at most limit bytes, dropping the rest.
type limitedBuffer struct {
	bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.limit - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
