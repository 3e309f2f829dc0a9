// Package testguest builds and runs the project's small Linux test guest under
// QEMU/TCG, and captures real QEMU migration streams from it.
//
// It owns: running testdata/guest/build-guest.sh into a shared cache directory
// (Build), launching qemu-system-x86_64 with a QMP socket and a serial log (Start),
// a small QMP client (VM.QMP), reading the guest's serial protocol (heartbeat,
// checksum, ready; see testdata/guest/init.sh), driving plain QEMU migrations
// between two VMs or into a file (VM.Migrate, VM.Capture, CaptureStream), and a
// structural check of a captured stream's framing (InspectStream).
//
// It must not: be imported by production code (it lives under host/internal and
// exists for tests, benchmarks and the stream-capture tool), parse RAM pages of a
// stream (that belongs to the stream parser), or leave a QEMU process behind: every
// VM is killed by Close, and on Linux also by the kernel if the test process dies
// (Pdeathsig).
//
// Tests that need QEMU call Require, which skips when qemu-system-x86_64 or the
// guest's inputs (kernel, busybox-static, cpio) are missing, unless the environment
// sets DWCP_REQUIRE_QEMU_TESTS=1 (as CI does): then a missing piece is a failure.
package testguest
