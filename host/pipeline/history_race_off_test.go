//go:build !race

package pipeline

const historyUnderRace = false
