// Package bench is the harness behind `hsmemu bench`: it loads any number
// of PKCS#11 modules into one process and measures the same operations on
// each, interleaved run by run so that their ratios hold on a shared,
// noisy machine (Run); and, from the same binary, the daemon's in-process
// hot path beside its floors (Hotpath).
//
// Each measured operation is one call into C (p11.c) that makes the
// PKCS#11 calls it needs with buffers large enough for one pass, so every
// module is measured the same way and no size query is counted.
package bench
