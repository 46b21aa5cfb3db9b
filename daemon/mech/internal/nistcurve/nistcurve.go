// Package nistcurve names the NIST prime curves as OpenSSL's libcrypto
// knows them, by NID. It is the one list the packages that hand a curve
// to OpenSSL through cgo (ecnonce, ecverify) take their curves from, so
// that the mechanisms pass either the same value for the same curve and
// no second copy of the NIDs can drift from the first. It holds names
// only: no OpenSSL call, so it sits below both and calls neither.
package nistcurve

/*
#cgo pkg-config: libcrypto
#include <openssl/obj_mac.h>
*/
import "C"

// Curve is a NIST curve by OpenSSL's NID.
type Curve C.int

// The curves, from OpenSSL's own header.
const (
	P256 Curve = C.NID_X9_62_prime256v1
	P384 Curve = C.NID_secp384r1
	P521 Curve = C.NID_secp521r1
)
