package modes

// RaceEnabled lets the external test package (the lab tests, which use
// host/modes/modeslab and so cannot be in package modes) see the build's
// race setting.
const RaceEnabled = raceEnabled
