//go:build race

package mech

// raceEnabled: the race detector slows hash-based signing tenfold or
// more, so the slowest SLH-DSA sets are sampled under it.
const raceEnabled = true
