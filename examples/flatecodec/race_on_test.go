//go:build race

package main

// raceEnabled: under -race, sync.Pool drops pooled items at random.
const raceEnabled = true
