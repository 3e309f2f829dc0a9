//go:build race

package transport

// raceEnabled: the race detector slows TLS and the pipeline several times.
const raceEnabled = true
