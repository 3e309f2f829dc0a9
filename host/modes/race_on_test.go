//go:build race

package modes

// raceEnabled: the race detector slows TLS and the pipeline several times.
const raceEnabled = true
