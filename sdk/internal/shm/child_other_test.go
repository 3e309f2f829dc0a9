//go:build !linux

package shm

func childMain() int { return 2 }
