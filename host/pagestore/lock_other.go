//go:build !unix

package pagestore

import "os"

// lockDir does nothing where flock is missing: one process per state
// directory is then the operator's rule.
func lockDir(*os.File) error { return nil }
