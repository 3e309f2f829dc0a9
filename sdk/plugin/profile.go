package plugin

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/hashicorp/go-hclog"
)

// ProfileEnv names the variable that makes a plugin write a CPU profile
// of its own process: DWCP_PLUGIN_CPUPROFILE=PREFIX writes
// PREFIX.NAME.PID.pprof (NAME is ServeConfig.Name) when Serve ends, i.e.
// when the host closes the plugin gracefully (plugin.Instance.Close). The
// host's environment is inherited, so setting it for a host process (a
// benchmark run with -cpuprofile, dwcp itself) profiles every plugin that
// host starts; the host side of the boundary is only half of the cost,
// and this is how the other half is seen (docs/dataplane.md, *Profiling
// both processes*). It is for diagnosis only: profiling costs ~1-2 % CPU.
const ProfileEnv = "DWCP_PLUGIN_CPUPROFILE"

// startProfile starts the CPU profile ProfileEnv asks for and returns the
// function that stops it and closes the file. Failures are logged, never
// fatal: a diagnostic must not stop the plugin from serving.
func startProfile(logger hclog.Logger, name string) (stop func()) {
	prefix := os.Getenv(ProfileEnv)
	if prefix == "" {
		return func() {}
	}
	path := fmt.Sprintf("%s.%s.%d.pprof", prefix, name, os.Getpid())
	f, err := os.Create(path)
	if err != nil {
		logger.Warn("cannot write the CPU profile", "env", ProfileEnv, "error", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		logger.Warn("cannot start the CPU profile", "env", ProfileEnv, "error", err)
		_ = f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			logger.Warn("cannot write the CPU profile", "path", path, "error", err)
		}
	}
}
