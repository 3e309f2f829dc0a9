package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
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

// Handshake is the go-plugin handshake shared by the host and every plugin.
// The cookie only keeps a plugin binary from being run by hand by mistake;
// it is not a security measure.
var Handshake = goplugin.HandshakeConfig{
	ProtocolVersion:  sdk.ProtocolVersion,
	MagicCookieKey:   "DWCP_PLUGIN",
	MagicCookieValue: "c0dec-acce1-hyperv1sor",
}

// pluginName is the single entry of every plugin set: one binary serves one
// kind, plus PluginInfo.
const pluginName = "dwcp"

// dataPlaneEnv names the variable that carries the file descriptor number
// of the shared-memory data plane socket the host passed in ExtraFiles.
const dataPlaneEnv = "DWCP_DATAPLANE_FD"

// ServeConfig describes the plugin Serve runs. Exactly one of Codec,
// Accelerator and Hypervisor must be set.
type ServeConfig struct {
	// Name is the plugin's short name, e.g. "zstd".
	Name string
	// Version is the plugin's own version.
	Version string
	// Summary is a one-line description for `dwcp plugins list`.
	Summary string

	Codec       codec.Codec
	Accelerator accel.Accelerator
	Hypervisor  hypervisor.Hypervisor

	// Logger defaults to hclog JSON on stderr, which the host parses and
	// names after the plugin.
	Logger hclog.Logger

	// ProtocolVersions overrides the protocol majors served. Leave it empty:
	// it exists so that tests can build a plugin from the future.
	ProtocolVersions []int
}

func (c *ServeConfig) kind() (sdk.Kind, any, error) {
	var kinds []sdk.Kind
	var impl any
	if c.Codec != nil {
		kinds, impl = append(kinds, sdk.KindCodec), c.Codec
	}
	if c.Accelerator != nil {
		kinds, impl = append(kinds, sdk.KindAccelerator), c.Accelerator
	}
	if c.Hypervisor != nil {
		kinds, impl = append(kinds, sdk.KindHypervisor), c.Hypervisor
	}
	if len(kinds) != 1 {
		return "", nil, fmt.Errorf("plugin %q: ServeConfig needs exactly one of Codec, Accelerator, Hypervisor (got %d)", c.Name, len(kinds))
	}
	if c.Name == "" {
		return "", nil, errors.New("plugin: ServeConfig.Name is empty")
	}
	return kinds[0], impl, nil
}

func (c *ServeConfig) description(kind sdk.Kind) sdk.Description {
	versions := c.ProtocolVersions
	if len(versions) == 0 {
		versions = []int{sdk.ProtocolVersion}
	}
	return sdk.Description{
		Kind:             kind,
		Name:             c.Name,
		Version:          c.Version,
		ProtocolVersions: versions,
		SDKVersion:       sdk.Version,
		Summary:          c.Summary,
	}
}

// Serve runs the plugin and does not return while the host keeps it. Run
// with the single argument `describe` it prints the plugin's Description as
// JSON on stdout and exits, without starting RPC. A misconfigured
// ServeConfig is reported on stderr with exit status 2.
//
// Nothing may be written to stdout before Serve: go-plugin's handshake
// owns it. After Serve starts, go-plugin carries what the plugin prints to
// stdout or stderr to the host, which adds it to the plugin's stderr copy.
func Serve(cfg ServeConfig) {
	kind, impl, err := cfg.kind()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	desc := cfg.description(kind)
	if len(os.Args) == 2 && os.Args[1] == "describe" {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(desc); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}

	logger := cfg.Logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{
			Name:       cfg.Name,
			Level:      hclog.Info,
			Output:     os.Stderr,
			JSONFormat: true,
		})
	}

	exitWithParent(logger)
	stopProfile := startProfile(logger, cfg.Name)
	defer stopProfile()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dp := startDataPlane(ctx, logger, impl)

	set := goplugin.PluginSet{pluginName: &grpcPlugin{
		server: func(s *grpc.Server) {
			registerServers(s, desc, impl, dp.mode)
		},
	}}
	versioned := map[int]goplugin.PluginSet{}
	for _, v := range desc.ProtocolVersions {
		versioned[v] = set
	}
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig:  Handshake,
		VersionedPlugins: versioned,
		GRPCServer:       goplugin.DefaultGRPCServer,
		Logger:           logger,
	})
	cancel()
	dp.wait()
}

func registerServers(s *grpc.Server, desc sdk.Description, impl any, dataPlane func() string) {
	pb.RegisterPluginInfoServer(s, &infoServer{desc: desc, impl: impl, dataPlane: dataPlane})
	switch impl := impl.(type) {
	case codec.Codec:
		pb.RegisterCodecServer(s, &codecServer{impl: impl})
	case accel.Accelerator:
		pb.RegisterAcceleratorServer(s, &accelServer{impl: impl})
	case hypervisor.Hypervisor:
		pb.RegisterHypervisorServer(s, &hypervisorServer{impl: impl})
	}
}

// dataPlaneServer is the plugin side of the shared-memory data plane.
type dataPlaneServer struct {
	mode func() string
	wait func()
}

// startDataPlane serves shared-memory requests when the host passed a
// data-plane socket and the plugin's kind moves bulk bytes.
func startDataPlane(ctx context.Context, logger hclog.Logger, impl any) dataPlaneServer {
	none := dataPlaneServer{mode: func() string { return "grpc" }, wait: func() {}}
	fdText := os.Getenv(dataPlaneEnv)
	if fdText == "" {
		return none
	}
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 {
		logger.Warn("ignoring malformed data plane descriptor", "env", dataPlaneEnv, "value", fdText)
		return none
	}
	conn := os.NewFile(uintptr(fd), "dwcp-dataplane")
	handler := dataPlaneHandler(impl)
	if handler == nil {
		_ = conn.Close()
		return none
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := shm.Serve(ctx, conn, handler, dataPlaneWorkers())
		if err != nil && ctx.Err() == nil {
			logger.Error("shared-memory data plane stopped", "error", err)
		}
	}()
	return dataPlaneServer{
		mode: func() string {
			select {
			case <-done:
				return "grpc"
			default:
				return "shm"
			}
		},
		wait: func() { <-done },
	}
}

// dataPlaneWorkers returns how many goroutines serve the data plane (one
// per P the process had: the codec work is CPU-bound) and gives the
// process one P more than that. A worker with nothing to do sleeps in a
// futex syscall holding its P; with every P so held, the runtime's sysmon
// retakes one after 20 µs, and every retake makes sysmon poll again at
// 20 µs for as long as the plugin is busy (measured on a 2-vCPU VM: 1.5-2.9
// sysmon wake-ups and 20-40 µs of its CPU per 1 MiB request;
// docs/dataplane.md, "Waking the host"). With one P idle, a P in a syscall is not retaken (the runtime
// only retakes when no P is idle) and sysmon backs off to 10 ms. The
// spare P also runs the gRPC control plane while every worker is busy.
// It changes nothing for CPU-bound work: there are only as many workers
// as before.
func dataPlaneWorkers() int {
	workers := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(workers + 1)
	return workers
}

// Data-plane op codes for codecs; accelerators use accel.Op values.
const (
	opEncode uint32 = 1
	opDecode uint32 = 2
)

func dataPlaneHandler(impl any) shm.Handler {
	switch impl := impl.(type) {
	case codec.Codec:
		return func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
			var res []byte
			var err error
			switch op {
			case opEncode:
				res, err = impl.Encode(out[:0], in, int(arg))
			case opDecode:
				res, err = impl.Decode(out[:0], in, len(out))
			default:
				err = fmt.Errorf("codec data plane: unknown op %d: %w", op, sdk.ErrInvalidArgument)
			}
			return finishInto(out, res, err)
		}
	case accel.Accelerator:
		return func(op uint32, arg int64, in, out []byte) (int, uint32, string) {
			res, err := impl.Run(out[:0], accel.Op(op), arg, in)
			return finishInto(out, res, err)
		}
	}
	return nil
}

// finishInto makes sure an append-style result sits in the slot's output
// region: an implementation that outgrew it reallocated, which means the
// output is larger than the host accepts.
func finishInto(out, res []byte, err error) (int, uint32, string) {
	if err != nil {
		code, _ := errorCode(err)
		return 0, uint32(code), err.Error()
	}
	if len(res) > len(out) {
		code, _ := errorCode(sdk.ErrTooLarge)
		return 0, uint32(code), fmt.Sprintf("output of %d bytes exceeds the %d-byte slot: %v", len(res), len(out), sdk.ErrTooLarge)
	}
	if len(res) > 0 && &res[0] != &out[0] {
		copy(out, res)
	}
	return len(res), 0, ""
}

// exitWithParent ends the plugin when the host is gone, even if the host was
// SIGKILLed and could not tell it: the parent pid changes when the parent
// dies (re-parenting to init or a subreaper).
func exitWithParent(logger hclog.Logger) {
	setParentDeathSignal()
	parent := os.Getppid()
	go func() {
		for range time.Tick(250 * time.Millisecond) {
			if os.Getppid() != parent {
				logger.Error("host process is gone; exiting", "parent", parent)
				os.Exit(3)
			}
		}
	}()
}
