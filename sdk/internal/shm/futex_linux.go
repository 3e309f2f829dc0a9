package shm

import (
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// word returns the shared uint32 at off in the arena, for sync/atomic.
//
// Why this is sound: the arena is a MAP_SHARED mapping outside the Go heap
// that stays mapped while any caller can reach it (the Client unmaps under
// an exclusive lock only after every Call has left; Serve after every
// worker has); off is a multiple of 4 inside the control area of a
// page-aligned mapping, so the pointer is aligned as sync/atomic requires;
// and the garbage collector neither scans nor moves memory it did not
// allocate. Both processes only ever touch these words with atomic
// instructions (LOCK-prefixed or XCHG on amd64, which are sequentially
// consistent across processes as they are across threads), and the futex
// syscalls below address the same physical word from either side.
func word(mem []byte, off uint64) *uint32 {
	return (*uint32)(unsafe.Pointer(&mem[off : off+4][0]))
}

// Futex operations without FUTEX_PRIVATE_FLAG: the word lives in a shared
// mapping and the waker may be the other process.
const (
	futexWait = 0
	futexWake = 1
)

// futexSleep blocks while *addr == val, at most d (d <= 0: no limit). It
// returns on a wake-up, a change of *addr, a signal or the timeout; callers
// always re-check their condition, so the reason does not matter. It goes
// through unix.Syscall6, not RawSyscall, so that the runtime can run other
// goroutines on this P while the thread sleeps.
func futexSleep(addr *uint32, val uint32, d time.Duration) {
	if d <= 0 {
		unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val), 0, 0, 0)
		return
	}
	ts := unix.NsecToTimespec(int64(d))
	unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexSleepRaw is futexSleep (d > 0) without telling the Go runtime: the
// thread keeps its P while it sleeps, so sysmon sees no syscall to retake
// and nothing is handed off. Only for sleeps bounded to tens of
// microseconds (Client.wait's short phase): meanwhile no other goroutine
// can run on this P.
func futexSleepRaw(addr *uint32, val uint32, d time.Duration) {
	ts := unix.NsecToTimespec(int64(d))
	unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWait, uintptr(val), uintptr(unsafe.Pointer(&ts)), 0, 0)
}

// futexWakeN wakes up to n sleepers on addr. It never blocks.
func futexWakeN(addr *uint32, n int) {
	unix.RawSyscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(addr)), futexWake, uintptr(n), 0, 0, 0)
}

// bump adds 1 to a futex word and wakes up to n sleepers on it. Any sleeper
// that read the word before the add either gets the wake or, if it was not
// asleep yet, finds the value changed and does not sleep.
func bump(addr *uint32, n int) {
	atomic.AddUint32(addr, 1)
	futexWakeN(addr, n)
}
