// Command dwcp is the DWCP host: the operator's CLI and the daemon that
// accepts migrations from peer hosts.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// exitError carries a specific exit status through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := startCPUProfile(os.Getenv("DWCP_CPUPROFILE"))
	err := newRootCommand().ExecuteContext(ctx)
	stopProfile()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dwcp:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "dwcp",
		Short:         "DWCP live-migration backend for QEMU/KVM and libvirt hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersionCommand(), newPluginsCommand(), newCertsCommand(), newSendCommand(), newServeCommand(), newLabCommand(), newMigrateCommand(), newDemoCommand(), newBenchCommand())
	return root
}

// startCPUProfile writes a CPU profile of this process to PREFIX.PID.prof
// when DWCP_CPUPROFILE=PREFIX is set (every dwcp process of a lab run gets
// its own file: the daemons on both hosts and the migrate command), for
// `go tool pprof`. The returned function ends the profile. A profile that
// cannot be started is reported and the command runs without it.
func startCPUProfile(prefix string) func() {
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%d.prof", prefix, os.Getpid()))
	if err == nil {
		err = pprof.StartCPUProfile(f)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dwcp: DWCP_CPUPROFILE:", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "dwcp: DWCP_CPUPROFILE:", err)
		}
	}
}

var errLabFailed = errors.New("lab command failed")
