//go:build unix

package pagestore

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive advisory lock on f for the life of the
// process's open file: a second process (`dwcp send` beside `dwcp serve`)
// must not delete the sessions the first one is recording as crash
// leftovers.
func lockDir(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("pagestore: lock %s: %w", f.Name(), ErrLocked)
		}
		return fmt.Errorf("pagestore: lock %s: %w", f.Name(), err)
	}
	return nil
}
