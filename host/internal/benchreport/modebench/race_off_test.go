//go:build !race

package modebench

const raceEnabled = false
