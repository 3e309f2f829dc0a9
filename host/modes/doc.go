// Package modes fits a migration to the network it crosses: it measures the
// path to the peer (an active probe when a session starts, a per-peer cache
// of earlier results, passive estimates while data flows), classifies it as
// datacenter, hybrid or internet with documented and overridable
// thresholds, turns the mode into pipeline settings (page stage, codec and
// starting level, streams, batch and buffer sizes), and runs the adaptive
// controller that picks the codec and level of every batch by the rule
// "the migration is as fast as its slowest stage".
//
// It owns the probe's message format (type bytes 0xF0..0xF7, disjoint from
// the pipeline's frame types), the path cache file, the peer override file,
// the classification and its hysteresis, the codec-speed model and the
// controller's decision log. docs/modes.md describes all of it with the
// measured numbers behind the thresholds.
//
// It must not move stream bytes, open connections or reach into a
// session's transport: it measures over a connection it is handed and
// recommends the settings the caller applies. The one thing it changes
// itself is the number of data connections, and only through the
// StreamResizer the caller hands the controller (the transport applies it).
// Nothing it reads from a peer or a file is trusted before it has been
// checked.
package modes
