//go:build race

package pagestage

// raceEnabled trims the longest tests: the race detector makes them ~10x
// slower without finding more, as the package starts no goroutines.
const raceEnabled = true
