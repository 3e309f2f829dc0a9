package pagestage

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// cpuClock measures the CPU time of the calling goroutine, locked to its
// thread, so speed ratios hold on a machine other work shares: wall time
// there swings by 2x between identical runs.
type cpuClock struct{ start time.Duration }

func startCPU() cpuClock {
	runtime.LockOSThread()
	return cpuClock{threadCPU()}
}

func (c cpuClock) stop() time.Duration {
	d := threadCPU() - c.start
	runtime.UnlockOSThread()
	return d
}

func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
