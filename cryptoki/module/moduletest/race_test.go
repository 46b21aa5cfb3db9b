//go:build race

package moduletest

const raceEnabled = true
