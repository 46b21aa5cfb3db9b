//go:build !race

package mech

const raceEnabled = false
