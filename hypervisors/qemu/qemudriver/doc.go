// Package qemudriver is DWCP's QEMU hypervisor driver: it tells a QEMU
// process, over QMP, to migrate into or out of a unix socket that the DWCP
// host owns, and reports what QEMU says about it.
//
// It owns: the QMP conversations (through github.com/digitalocean/go-qemu's
// qmp.SocketMonitor, with hand-written JSON and typed replies, because the
// library's generated raw types reject QEMU 7.2's enum values), the
// fingerprint of the local QEMU (a throwaway `-machine none` process), the
// migration capabilities and parameters it sets on both ends, the mapping of
// query-migrate and MIGRATION/MIGRATION_PASS events to hypervisor.Status and
// hypervisor.Event, and the destination VMs it starts itself from a source's
// command line (argv rewriting, a per-migration run directory, the VM's
// lifetime when a migration fails or is cancelled).
//
// It must not: read or write the migration stream (QEMU writes it into the
// host's socket; the host relays it), let a destination VM run before the host
// says the whole stream was verified (FinishMigration with resume), leave a
// source VM stopped when a migration is cancelled, or kill a VM it did not
// start. VMs it starts are daemons: they outlive the plugin process on
// purpose, because they are the migrated VM, not a helper of the plugin.
package qemudriver
