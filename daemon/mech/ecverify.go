package mech

import (
	"crypto/elliptic"
	"sync/atomic"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech/internal/ecverify"
	"hsmemu/daemon/mech/internal/nistcurve"
)

// ECDSA verification on P-256 and P-521 is OpenSSL's (internal/ecverify).
// A signature made with a pooled nonce (nonces.go) costs about a
// microsecond in line; a verification is two scalar multiplications, which
// no pool can make ahead. OpenSSL does them in less CPU than crypto/ecdsa
// (P-256: 55 against 61 us; P-521: 0.42 against 2.0 ms on the development
// VM), and for a P-256 key verified with often a table of its point's
// multiples halves that again (27 us). P-384 stays with crypto/ecdsa,
// which OpenSSL's generic code does not beat.
//
// A table costs some 20 ms of CPU to build and 150 KB of memory, so a key
// gets one only after ecTableAfter verifications, built by a goroutine of
// its own (one at a time, ecTableBuilding) while the verifications go on
// without it, and only while fewer than ecTableMax tables are alive; a
// table goes with its key object (when the key cache lets the object go).
const (
	ecTableAfter = 256
	ecTableMax   = 64
)

// ecTableBuilding is set while a table is being built.
var ecTableBuilding atomic.Bool

// ecVerifyKey is an EC public key ready for OpenSSL's verification.
type ecVerifyKey struct {
	curve *nonceCurve
	key   *ecverify.Key
	table bool // the curve gets a table when used often
	uses  atomic.Int64
}

// ecVerifyKeyOf returns the OpenSSL form of a P-256 or P-521 key (public,
// or a private key's public half), or nil for another curve.
func ecVerifyKeyOf(k Key, c elliptic.Curve) (*ecVerifyKey, error) {
	if c != elliptic.P256() && c != elliptic.P521() {
		return nil, nil
	}
	return memoKey(k, "ecVerify", func(k Key) (*ecVerifyKey, error) {
		pub, err := ecdsaPublicOf(k)
		if err != nil {
			return nil, err
		}
		point, err := pub.Bytes()
		if err != nil {
			return nil, errKeyBroken
		}
		nc, _ := nonceCurveOf(c)
		oc := nistcurve.P521
		if c == elliptic.P256() {
			oc = nistcurve.P256
		}
		key, err := ecverify.New(oc, point, nc.size)
		if err != nil {
			return nil, errKeyBroken
		}
		return &ecVerifyKey{curve: nc, key: key, table: c == elliptic.P256()}, nil
	})
}

// verify checks r || s over the digest (or the raw input of CKM_ECDSA).
func (v *ecVerifyKey) verify(in, sig []byte) error {
	if len(sig) != 2*v.curve.size {
		return ck.Error(ck.CKR_SIGNATURE_LEN_RANGE)
	}
	if v.table && v.uses.Add(1) == ecTableAfter {
		v.startTable()
	}
	e, err := v.curve.hashToNat(in)
	if err != nil {
		return ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	ok, err := v.key.Verify(e.Bytes(v.curve.n), sig)
	switch {
	case err != nil:
		return ck.Error(ck.CKR_FUNCTION_FAILED)
	case !ok:
		return ck.Error(ck.CKR_SIGNATURE_INVALID)
	}
	return nil
}

// startTable builds the key's table in the background when no other is
// being built and the bound allows; otherwise the key goes on without one.
func (v *ecVerifyKey) startTable() {
	if ecverify.Tables() >= ecTableMax || !ecTableBuilding.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer ecTableBuilding.Store(false)
		// Without a table the key verifies as before: nothing to report.
		_ = v.key.Precompute()
	}()
}
