// Package moduletest tests the C PKCS#11 module (bin/hsmemu-pkcs11.so)
// against a fake peer: a Unix socket listener that speaks the daemon's side
// of docs/protocol.md through package wire and answers each call with
// whatever the test decides. It is a unit-level fake of the daemon, for the
// module's marshalling, pool, reconnection and discovery; the real daemon
// is used end to end elsewhere.
//
// Module loads the built module with dlopen (cgo) and calls it through its
// PKCS#11 3.0 function list. There is one module per process, as for any
// application, so the tests that use it run one after another.
package moduletest
