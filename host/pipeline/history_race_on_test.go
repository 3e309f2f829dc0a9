//go:build race

package pipeline

// historyUnderRace skips the real-stream history test under the race
// detector: 360 MB through the pipeline three times takes minutes there
// and exercises nothing the synthetic tests do not.
const historyUnderRace = true
