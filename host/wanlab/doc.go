// Package wanlab is a packet-level WAN emulator in user space: a lab of test
// hosts, each its own network namespace with one address on a private /24,
// joined through TUN devices whose packets a shaper in the calling process
// moves between them. Per direction it applies one-way delay, jitter (in
// order unless reordering is asked for), a rate limit behind a drop-tail
// queue, random loss and scripted cuts, all changeable while traffic flows.
//
// The package owns the lab's namespaces, TUN devices and shaping goroutines,
// from New to Close, and cleans namespaces that a killed lab process left
// behind. It offers ways to run code and processes inside a host (Do,
// Listen, Dial, Command), named profiles of typical links, a self-test that
// measures the lab against its own settings, and the entry point of the
// `dwcp lab` command (Main).
//
// It must not touch anything outside its own namespaces: no routes, qdiscs,
// sysctls or devices of the root namespace are created or changed, and
// traffic only ever goes to the lab's own addresses. It knows nothing about
// migrations; DWCP's tests and benchmarks bring their own traffic.
//
// To keep time on a machine busy with other work, the forwarder runs on
// SCHED_FIFO threads of its own, and while any lab runs the process's
// GOMAXPROCS is raised by one per such thread (see reserveProcs). These are
// process-wide effects of New, undone by Close.
//
// The lab needs Linux, root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_NICE),
// /dev/net/tun and, for Command only, iproute2's ip. See docs/wanlab.md.
package wanlab
