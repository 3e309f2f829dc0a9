package shm

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// childEnv, when set, turns the test binary into a plugin process: TestMain
// serves the shared-memory channel on the descriptor the parent passed in
// ExtraFiles instead of running tests (see childMain).
const childEnv = "DWCP_SHM_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}
