package codecbench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 for user space whatever the kernel's own tick rate.
const userHZ = 100

var errProcFormat = errors.New("unexpected /proc format")

// parseStatus reads VmRSS and VmHWM (in bytes) from /proc/PID/status.
func parseStatus(b []byte) (rss, hwm int64, err error) {
	var haveRSS, haveHWM bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		var dst *int64
		switch string(key) {
		case "VmRSS":
			dst, haveRSS = &rss, true
		case "VmHWM":
			dst, haveHWM = &hwm, true
		default:
			continue
		}
		f := bytes.Fields(val)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, 0, fmt.Errorf("status %s %q: %w", key, val, errProcFormat)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 || kb > 1<<40 {
			return 0, 0, fmt.Errorf("status %s %q: %w", key, val, errProcFormat)
		}
		*dst = kb << 10
	}
	if !haveRSS || !haveHWM {
		return 0, 0, fmt.Errorf("status without VmRSS and VmHWM: %w", errProcFormat)
	}
	return rss, hwm, nil
}

// parseStat reads utime+stime from /proc/PID/stat. The command name (field
// 2) is in parentheses and may itself hold spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat without a command name: %w", errProcFormat)
	}
	f := bytes.Fields(b[i+1:])
	// After the name: state(3) ... utime(14) stime(15), so indexes 11, 12.
	// Each is bounded so that their sum in nanoseconds fits a Duration.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat with %d fields after the name: %w", len(f), errProcFormat)
	}
	var ticks uint64
	for _, s := range f[11:13] {
		v, err := strconv.ParseUint(string(s), 10, 64)
		if err != nil || v > 1<<38 {
			return 0, fmt.Errorf("stat cpu time %q: %w", s, errProcFormat)
		}
		ticks += v
	}
	return time.Duration(ticks) * (time.Second / userHZ), nil
}

// procUsage is what one process used so far.
type procUsage struct {
	RSS, HWM int64
	CPU      time.Duration
}

func readProc(pid int) (procUsage, error) {
	var u procUsage
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	if u.RSS, u.HWM, err = parseStatus(st); err != nil {
		return u, fmt.Errorf("process %d: %w", pid, err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	if u.CPU, err = parseStat(stat); err != nil {
		return u, fmt.Errorf("process %d: %w", pid, err)
	}
	return u, nil
}

// resetPeak restarts a process's VmHWM at its current RSS (clear_refs 5);
// it reports whether the kernel let us.
func resetPeak(pid int) bool {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) == nil
}

// usage is the resources of this process and of the codec plugins over one
// run.
type usage struct {
	HostBefore, PluginsBefore int64 // RSS at the start
	HostPeak, PluginsPeak     int64 // peak RSS during the run
	HostCPU, PluginsCPU       time.Duration
	Exact                     bool // peaks are VmHWM after a reset, not samples
}

// meter samples this process and the plugin processes while a run lasts.
type meter struct {
	pids  []int
	start []procUsage
	exact bool
	stop  chan struct{}
	wg    sync.WaitGroup

	mu   sync.Mutex
	peak []int64 // sampled RSS peaks
	err  error
}

// startMeter records the starting point and samples RSS every 20 ms
// until Stop, in case VmHWM cannot be reset.
func startMeter(plugins []int) (*meter, error) {
	m := &meter{pids: append([]int{os.Getpid()}, plugins...), stop: make(chan struct{}), exact: true}
	m.peak = make([]int64, len(m.pids))
	for i, pid := range m.pids {
		if !resetPeak(pid) {
			m.exact = false
		}
		u, err := readProc(pid)
		if err != nil {
			return nil, fmt.Errorf("read usage: %w", err)
		}
		m.start = append(m.start, u)
		m.peak[i] = u.RSS
	}
	m.wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				m.sample()
			}
		}
	})
	return m, nil
}

func (m *meter) sample() []procUsage {
	now := make([]procUsage, len(m.pids))
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, pid := range m.pids {
		u, err := readProc(pid)
		if err != nil {
			if m.err == nil {
				m.err = fmt.Errorf("read usage: %w", err)
			}
			continue
		}
		now[i] = u
		m.peak[i] = max(m.peak[i], u.RSS)
	}
	return now
}

// Stop ends sampling and returns the run's usage.
func (m *meter) Stop() (usage, error) {
	close(m.stop)
	m.wg.Wait()
	end := m.sample()
	if m.err != nil {
		return usage{}, m.err
	}
	u := usage{Exact: m.exact}
	for i := range m.pids {
		peak := m.peak[i]
		if m.exact {
			peak = max(peak, end[i].HWM)
		}
		cpu := end[i].CPU - m.start[i].CPU
		if i == 0 {
			u.HostBefore, u.HostPeak, u.HostCPU = m.start[i].RSS, peak, cpu
		} else {
			u.PluginsBefore += m.start[i].RSS
			u.PluginsPeak += peak
			u.PluginsCPU += cpu
		}
	}
	return u, nil
}
