//go:build race

package codectest

// RaceEnabled reports a -race build. sync.Pool drops items at random under
// the race detector, so allocation counts mean nothing there, and the
// detector slows codecs several times over.
const RaceEnabled = true
