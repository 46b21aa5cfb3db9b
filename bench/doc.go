// Package bench will hold the benchmark harness behind `hsmemu bench`. It
// holds nothing yet; the keystore's hot-path benchmarks live beside the
// keystore (go test -bench 'Open|Seal|Floor' ./keystore/).
package bench
