//go:build !race

package qataccel

const raceEnabled = false
