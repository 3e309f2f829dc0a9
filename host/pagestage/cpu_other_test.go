//go:build !linux

package pagestage

import "time"

// cpuClock falls back to wall time where per-thread CPU time is not at hand.
type cpuClock struct{ start time.Time }

func startCPU() cpuClock { return cpuClock{time.Now()} }

func (c cpuClock) stop() time.Duration { return time.Since(c.start) }
