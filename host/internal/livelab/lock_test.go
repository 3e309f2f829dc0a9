package livelab

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// One live lab at a time: a second waits, says so, gives up with its
// context, and gets the lock once the first releases it.
func TestLockLabsOneAtATime(t *testing.T) {
	old := lockFile
	lockFile = filepath.Join(t.TempDir(), "lock")
	defer func() { lockFile = old }()
	release, err := lockLabs(context.Background(), t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	var said []string
	ctx, cancel := context.WithTimeout(context.Background(), 600*time.Millisecond)
	defer cancel()
	_, err = lockLabs(ctx, func(f string, a ...any) { said = append(said, f) })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lab while the first holds the lock: %v, want a deadline error", err)
	}
	if len(said) != 1 || !strings.Contains(said[0], "waiting") {
		t.Errorf("the waiting lab said %q, want one line that it waits", said)
	}
	release()
	again, err := lockLabs(context.Background(), t.Logf)
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	again()
}
