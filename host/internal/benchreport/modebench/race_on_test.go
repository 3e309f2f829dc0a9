//go:build race

package modebench

// raceEnabled: the race detector slows the pipeline, TLS and the lab's
// forwarder several times; the lab run would take many minutes.
const raceEnabled = true
