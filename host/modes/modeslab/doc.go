// Package modeslab runs the machinery of host/modes between two hosts of a
// WAN lab (host/wanlab) over real transport sessions (mutual TLS, several
// data connections): the probe a session starts with, a pipeline transfer
// under any policy (a fixed codec step or the adaptive controller), a plain
// TCP transfer as the baseline, and a link change in the middle of a
// transfer with the controller's reaction timed. The lab tests and
// benchmarks of host/modes and the validation report's hybrid-mode part
// (host/internal/benchreport/modebench) share it, so that what the report
// shows is what the tests check.
//
// It owns the listeners, sessions and goroutines of one experiment, from
// its start to its return (or to Pair.Close). It must not pick thresholds,
// codecs, profiles or sizes, and must not judge results: the caller brings
// the first and decides the second. It needs Linux (the lab does).
package modeslab
