// Package plugin runs DWCP plugins and talks to them.
//
// The plugin side is one call, Serve: it answers `BINARY describe` with a
// JSON description (no RPC), and otherwise serves the plugin over
// hashicorp/go-plugin (gRPC, AutoMTLS when the host asks for it), with
// hclog JSON on stderr and nothing on stdout, exiting when its parent dies.
//
// The host side is Launch: it starts a binary (optionally pinned by
// SHA-256), negotiates the protocol version, attaches the shared-memory data
// plane for codecs and accelerators, and returns an Instance whose Codec,
// Accelerator or Hypervisor methods give back the same Go interfaces the
// plugin implemented; a codec also offers codec.Leaser, whose Buffers are
// shared-memory slots the caller builds blocks in and reads results from
// in place (private memory and the copying path when no slot fits), and
// codec.Batcher, whose Batches carry many blocks in one slot and one round
// trip. Errors a plugin returns keep their sdk sentinel
// (errors.Is works); a plugin that dies mid-call yields sdk.ErrPluginCrashed
// with its last stderr lines.
//
// This package owns the process boundary. It must not choose plugins,
// verify catalogs or restart crashed plugins: that is the host's job.
package plugin
