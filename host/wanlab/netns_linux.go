//go:build linux

package wanlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// nsDir is where iproute2 keeps named network namespaces, so that
// `ip netns exec` finds the lab's hosts.
const nsDir = "/run/netns"

// namePrefix starts every namespace a lab creates. The full name is
// dwcplab-<owner pid>-<lab number>-<host index>, which lets New find
// namespaces whose owner died without closing its lab.
const namePrefix = "dwcplab-"

var (
	nsDirOnce sync.Once
	nsDirErr  error
)

// prepareNSDir makes nsDir a shared mount point, as `ip netns add` does,
// so namespaces mounted there are also seen by mount namespaces created
// later (for example by `ip netns exec`).
func prepareNSDir() error {
	nsDirOnce.Do(func() {
		if err := os.MkdirAll(nsDir, 0o755); err != nil {
			nsDirErr = fmt.Errorf("create %s: %w", nsDir, err)
			return
		}
		err := unix.Mount("", nsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if errors.Is(err, unix.EINVAL) {
			if err = unix.Mount(nsDir, nsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err == nil {
				err = unix.Mount("", nsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
			}
		}
		if err != nil {
			nsDirErr = fmt.Errorf("make %s a shared mount: %w", nsDir, err)
		}
	})
	return nsDirErr
}

// inThread runs fn on a fresh OS thread and waits for it. The thread is
// locked for its whole life and, if fn leaves it in a namespace it could
// not restore, the goroutine exits still locked so the runtime discards the
// thread instead of reusing it. A panic in fn is re-raised in the caller.
func inThread(fn func() error) error {
	type result struct {
		err   error
		panic any
		stack []byte
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		var r result
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.panic, r.stack = p, debug.Stack()
				}
			}()
			r.err = fn()
		}()
		done <- r
	}()
	r := <-done
	if r.panic != nil {
		panic(fmt.Sprintf("%v\n\ngoroutine running in a lab namespace:\n%s", r.panic, r.stack))
	}
	return r.err
}

// withNetns runs fn on a locked thread switched into the namespace nsfd,
// then switches the thread back. The thread is unlocked only when the
// switch back succeeded; otherwise it dies with its goroutine.
func withNetns(nsfd int, fn func() error) error {
	return inThread(func() error {
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open own network namespace: %w", err)
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsfd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			return fmt.Errorf("enter network namespace: %w", err)
		}
		defer func() {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		return fn()
	})
}

// createNetns creates a network namespace, pins it at nsDir/name and runs
// setup inside it. It returns an fd of the namespace for later setns.
func createNetns(name string, setup func() error) (int, error) {
	if err := prepareNSDir(); err != nil {
		return -1, err
	}
	path := filepath.Join(nsDir, name)
	nsfd := -1
	err := inThread(func() error {
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open own network namespace: %w", err)
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		defer func() {
			if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			}
		}()
		f, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
		unix.Close(f)
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			os.Remove(path)
			return fmt.Errorf("pin network namespace at %s: %w", path, err)
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", path, err)
		}
		nsfd = fd
		return setup()
	})
	if err != nil {
		if nsfd >= 0 {
			unix.Close(nsfd)
		}
		if rerr := deleteNetns(name); rerr != nil {
			err = errors.Join(err, rerr)
		}
		return -1, fmt.Errorf("create netns %s: %w", name, err)
	}
	return nsfd, nil
}

// deleteNetns unpins a namespace. The kernel frees it, with its devices,
// once no process, socket or fd refers to it any more.
func deleteNetns(name string) error {
	path := filepath.Join(nsDir, name)
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// ownerPID reads the owner's pid out of a lab namespace name.
func ownerPID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix)
	if !ok {
		return 0, false
	}
	field, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(field)
	if err != nil || pid <= 0 {
		return 0, false
	}
	return pid, true
}

func pidAlive(pid int) bool {
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// cleanStale removes lab namespaces whose owner process is gone. A lab of a
// live process, this one included, is never touched; a stale lab whose pid
// was reused by an unrelated process is kept until that process ends.
func cleanStale() ([]string, error) {
	entries, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", nsDir, err)
	}
	var cleaned []string
	var errs []error
	for _, e := range entries {
		pid, ok := ownerPID(e.Name())
		if !ok || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		if err := deleteNetns(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		cleaned = append(cleaned, e.Name())
	}
	return cleaned, errors.Join(errs...)
}

// listLabNetns lists the lab namespaces present, for tests and `lab up`.
func listLabNetns() ([]string, error) {
	entries, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", nsDir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), namePrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
