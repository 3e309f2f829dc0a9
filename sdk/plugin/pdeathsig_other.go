//go:build !linux

package plugin

import "os/exec"

// setParentDeathSignal has no kernel support here; the parent-pid watch in
// exitWithParent does the work.
func setParentDeathSignal() {}

func killWithParent(*exec.Cmd) {}
