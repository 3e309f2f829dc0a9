//go:build !race

package pagestage

const raceEnabled = false
