// Command dwcp is the DWCP host: the operator's CLI and the daemon that
// accepts migrations from peer hosts.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
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
	closeWindowLog := openWindowLog(os.Getenv("DWCP_WINDOW_LOG"))
	err := newRootCommand().ExecuteContext(ctx)
	closeWindowLog()
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
	root.AddCommand(newVersionCommand(), newPluginsCommand(), newCertsCommand(), newSendCommand(), newServeCommand(), newLabCommand(), newMigrateCommand(), newStatusCommand(), newDemoCommand(), newBenchCommand())
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

// windowLog is where the adaptive controller's windows are traced
// (agent.Config.WindowLog), nil for nowhere: DWCP_WINDOW_LOG=FILE appends
// one line per window of every session this process sends (the daemons
// of a lab run each append to it), for diagnosing what bound a migration.
var windowLog io.Writer

// openWindowLog opens DWCP_WINDOW_LOG's file for appending and sets
// windowLog; the returned function closes it. A file that cannot be opened
// is reported and the command runs without it.
func openWindowLog(path string) func() {
	if path == "" {
		return func() {}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dwcp: DWCP_WINDOW_LOG:", err)
		return func() {}
	}
	windowLog = f
	return func() {
		windowLog = nil
		if err := f.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "dwcp: DWCP_WINDOW_LOG:", err)
		}
	}
}

var errLabFailed = errors.New("lab command failed")
