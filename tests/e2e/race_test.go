//go:build race

package e2e

// raceEnabled: the test binary was built with -race, and so is stackd.
const raceEnabled = true
