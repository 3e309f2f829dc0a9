package testguest

import (
	"context"
	"fmt"
)

// Attach connects to a QEMU this package did not start (for example the
// destination VM a hypervisor plugin started), through its QMP socket
// qmpPath, and follows its serial log file. toolPath is the VM's other QMP
// socket, left for the software under test (QMPPath). Close asks QEMU to
// quit.
func Attach(ctx context.Context, qmpPath, toolPath, serialPath string) (*VM, error) {
	v := &VM{exited: make(chan struct{}), qmpPath: qmpPath, toolPath: toolPath, cfg: Config{Name: qmpPath}}
	if serialPath != "" {
		v.serial = newSerialLog(serialPath)
	}
	q, err := dialQMP(ctx, qmpPath, v.alive)
	if err != nil {
		return nil, fmt.Errorf("attach to %s: %w", qmpPath, err)
	}
	v.qmp = q
	return v, nil
}
