package mech

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"slices"

	"github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/sign"
	"github.com/cloudflare/circl/sign/slhdsa"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The post-quantum algorithms of PKCS#11 3.2: ML-KEM (FIPS 203, mlkem.go),
// ML-DSA (FIPS 204, mldsa.go) and SLH-DSA (FIPS 205, slhdsa.go). Their keys
// name a parameter set in CKA_PARAMETER_SET; a public key's CKA_VALUE is
// the FIPS encoding of the public key, a private key's CKA_VALUE the
// FIPS encoding of the private key and, for ML-KEM and ML-DSA, CKA_SEED
// the seed it expands from. The arithmetic is the libraries'
// (crypto/mlkem, github.com/cloudflare/circl, and filippo.io/mldsa for
// HashML-DSA, hashmldsa.go); this package only encodes, hashes, checks
// and dispatches.

// pqcMechanisms lists the post-quantum mechanisms.
func pqcMechanisms(policy) map[uint64]*Mechanism {
	return merge(mldsaMechanisms(), hashMLDSAMechanisms(), slhdsaMechanisms(), mlkemMechanisms())
}

// parameterSet reads a key's CKA_PARAMETER_SET.
func parameterSet(k Key) (uint64, bool) {
	v, ok := k.Attr(ck.CKA_PARAMETER_SET)
	if !ok || len(v) != 8 {
		return 0, false
	}
	return ulongOf(v), true
}

// templateSet returns the parameter set a key pair generation makes: the
// public template's CKA_PARAMETER_SET, which a private template may repeat
// but not contradict.
func templateSet(pub, priv map[uint64][]byte) (uint64, error) {
	v, ok := pub[ck.CKA_PARAMETER_SET]
	if !ok {
		return 0, ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	if len(v) != 8 {
		return 0, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	}
	if pv, ok := priv[ck.CKA_PARAMETER_SET]; ok && ulongOf(pv) != ulongOf(v) {
		return 0, ck.Error(ck.CKR_TEMPLATE_INCONSISTENT)
	}
	return ulongOf(v), nil
}

// sigContext is what CK_SIGN_ADDITIONAL_CONTEXT (or, for the pre-hash
// mechanism that names its hash, CK_HASH_SIGN_ADDITIONAL_CONTEXT) asks of
// a signature: a context string and whether it must be hedged or
// deterministic. No parameter is hedging preferred with an empty context
// (PKCS#11 3.2, "ML-DSA Signature").
type sigContext struct {
	ctx           []byte
	deterministic bool
	hash          uint64 // CK_HASH_SIGN_ADDITIONAL_CONTEXT's
}

// signContext reads the parameter of a pure or hash-specific mechanism
// (CK_SIGN_ADDITIONAL_CONTEXT), or with hashed set a generic pre-hash
// mechanism's (CK_HASH_SIGN_ADDITIONAL_CONTEXT, required since it names
// the hash), for a signature.
func signContext(m *wire.Mechanism, hashed bool) (sigContext, error) {
	return readSignContext(m, hashed, true)
}

// verifyContext reads a pure or hash-specific mechanism's parameter for a
// verification, which ignores the hedging, whatever its value (PKCS#11
// 3.2, "ML-DSA Signature", "SLH-DSA Signature"): a verifier has no
// randomness to choose, and a parameter shared with the signer verifies.
func verifyContext(m *wire.Mechanism) (sigContext, error) {
	return readSignContext(m, false, false)
}

func readSignContext(m *wire.Mechanism, hashed, signing bool) (sigContext, error) {
	if !m.Present {
		if hashed {
			return sigContext{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		return sigContext{}, nil
	}
	var p wire.SignContext
	var out sigContext
	if hashed {
		hp, err := m.Param.HashSignContext()
		if err != nil {
			return sigContext{}, mechParamErr(err)
		}
		p, out.hash = hp.SignContext, hp.Hash
	} else {
		var err error
		if p, err = m.Param.SignContext(); err != nil {
			return sigContext{}, mechParamErr(err)
		}
	}
	// FIPS 204 and 205 take contexts of at most 255 bytes.
	if len(p.Context) > 255 {
		return sigContext{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	switch p.HedgeVariant {
	case ck.CKH_HEDGE_PREFERRED, ck.CKH_HEDGE_REQUIRED:
		// Hedged: the libraries draw fresh randomness for each signature.
	case ck.CKH_DETERMINISTIC_REQUIRED:
		out.deterministic = true
	default:
		if signing {
			return sigContext{}, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
	}
	// A copy: the parameter points into the request's buffer, which the
	// next request reuses, and the operation outlives it.
	out.ctx = bytes.Clone(p.Context)
	return out, nil
}

// bufSigner is a signature over a whole message that may come in parts:
// ML-DSA and SLH-DSA sign the message itself, not a hash the token could
// keep instead, so the parts are kept, within maxBuffered.
type bufSigner struct {
	msg    []byte
	sign   func(msg []byte) ([]byte, error)
	verify func(msg, sig []byte) error
}

func (s *bufSigner) Update(in []byte) error {
	if len(s.msg)+len(in) > maxBuffered {
		return ck.Error(ck.CKR_DATA_LEN_RANGE)
	}
	s.msg = append(s.msg, in...)
	return nil
}

func (s *bufSigner) Sign() ([]byte, error) {
	if s.sign == nil {
		return nil, ck.Error(ck.CKR_GENERAL_ERROR)
	}
	return s.sign(s.msg)
}

func (s *bufSigner) Verify(sig []byte) error {
	if s.verify == nil {
		return ck.Error(ck.CKR_GENERAL_ERROR)
	}
	return s.verify(s.msg, sig)
}

// pqcPrivate checks that k is a private key of key type kt.
func pqcPrivate(k Key, kt uint64) error {
	if k.KeyType() != kt || k.Class() != ck.CKO_PRIVATE_KEY {
		return ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	return nil
}

// pqcPublic checks that k is a public key of key type kt. Verification
// and encapsulation take the public key object only: a private key
// object of these types holds no public key attribute to read.
func pqcPublic(k Key, kt uint64) error {
	if k.KeyType() != kt || k.Class() != ck.CKO_PUBLIC_KEY {
		return ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	return nil
}

// CompletePQCKey checks the material of a post-quantum key object being
// created (C_CreateObject, C_UnwrapKey) and adds what the key type
// derives from it: a private key given only its seed gets its FIPS
// encoding (CKA_VALUE). A parameter set the token lacks is
// CKR_PARAMETER_SET_NOT_SUPPORTED; material of the wrong size, a seed
// and value of different keys, or an expanded key whose parts belong to
// different keys (mldsaTRMatches, mldsaSignsForItsPublicKey,
// slhdsaRootMatches, and an ML-KEM dk whose ek fails the modulus check
// or whose dk_PKE is not its ek's: mlkemDKHoldsValidEK,
// mlkemDKConsistent), CKR_ATTRIBUTE_VALUE_INVALID.
func CompletePQCKey(class, kt uint64, m map[uint64][]byte) error {
	set := ulongOf(m[ck.CKA_PARAMETER_SET])
	seed, hasSeed := m[ck.CKA_SEED]
	val := m[ck.CKA_VALUE]
	bad := ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
	if hasSeed && class != ck.CKO_PRIVATE_KEY {
		return ck.Error(ck.CKR_ATTRIBUTE_TYPE_INVALID)
	}
	// An empty CKA_SEED is a seed of the wrong size, not a missing one.
	if class == ck.CKO_PRIVATE_KEY && !hasSeed && len(val) == 0 {
		return ck.Error(ck.CKR_TEMPLATE_INCOMPLETE)
	}
	k := &mapKey{class: class, kt: kt, m: m}
	var err error
	switch kt {
	case ck.CKK_ML_DSA:
		p, ok := mldsaSets[set]
		switch {
		case !ok:
			return ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
		case class == ck.CKO_PUBLIC_KEY:
			_, err = mldsaPublic(k)
		case hasSeed && len(seed) != mldsaSeedLen:
			return bad
		case hasSeed:
			if _, err = mldsaPrivate(k); err == nil && len(val) == 0 {
				_, sk := p.scheme.DeriveKey(seed)
				m[ck.CKA_VALUE], _ = sk.MarshalBinary()
			}
		default:
			var sk sign.PrivateKey
			if sk, err = mldsaPrivate(k); err == nil && (!mldsaTRMatches(sk, val) || !mldsaSignsForItsPublicKey(p, sk)) {
				return bad
			}
		}
	case ck.CKK_ML_KEM:
		p, ok := mlkemSets[set]
		switch {
		case !ok:
			return ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
		case class == ck.CKO_PUBLIC_KEY:
			_, err = mlkemPublic(k)
		case hasSeed && len(seed) != mlkemSeedLen:
			return bad
		case hasSeed:
			if _, err = mlkemPrivate(k); err == nil && len(val) == 0 {
				_, sk := p.circl.DeriveKeyPair(seed)
				m[ck.CKA_VALUE], _ = sk.MarshalBinary()
			}
		default:
			if _, err = mlkemPrivate(k); err == nil && (!mlkemDKHoldsValidEK(p, val) || !mlkemDKConsistent(p, val)) {
				return bad
			}
		}
	case ck.CKK_SLH_DSA:
		if _, ok := slhdsaID(set); !ok {
			return ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
		}
		if class == ck.CKO_PUBLIC_KEY {
			_, err = slhdsaPublic(k)
		} else if _, err = slhdsaPrivate(k); err == nil && !slhdsaRootMatches(k, val) {
			return bad
		}
	default:
		return ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if err != nil {
		return bad
	}
	return nil
}

// mldsaTRMatches says whether an expanded ML-DSA private key's tr (the
// 64 bytes after ρ and K) is the hash of the public key its s1 and s2
// give. Neither circl nor FIPS 204's skDecode checks it, and a key given
// without its seed whose tr is another's would sign with it: signatures
// no verifier holding its public key accepts. t0, the other part not
// derived on use, takes the lattice arithmetic to recompute that no
// library here exposes: mldsaSignsForItsPublicKey tests it by its effect.
func mldsaTRMatches(sk sign.PrivateKey, val []byte) bool {
	pk, err := sk.Public().(sign.PublicKey).MarshalBinary()
	if err != nil || len(val) < 128 {
		return false
	}
	return bytes.Equal(mldsaTR(pk), val[64:128])
}

// mlkemDKHoldsValidEK says whether the encapsulation key inside an ML-KEM
// decapsulation key (dk = dk_PKE ‖ ek ‖ H(ek) ‖ z, FIPS 203 Algorithm
// 16) passes the modulus check a public key object's does. circl checks
// only H(ek), which whoever wrote a bad ek can compute as well; a key
// holding one would give, as its public half, an encapsulation key that
// the token itself, and every FIPS 203 encapsulator, refuses. A dk from a
// seed is compared with the seed's own, so only one given alone is read.
func mlkemDKHoldsValidEK(p *mlkemSet, dk []byte) bool {
	n := p.circl.PublicKeySize()
	if len(dk) != p.circl.PrivateKeySize() {
		return false
	}
	_, err := mlkemParseEK(p, dk[n-32:2*n-32]) // dk_PKE is 384·k bytes, ek 384·k + 32
	return err == nil
}

// slhdsaRootMatches says whether an SLH-DSA private key's PK.root is the
// root of the hypertree its SK.seed and PK.seed make (FIPS 205's
// slh_keygen_internal, Algorithm 18, run again from the key's own seeds).
// circl reads PK.root as given, and a key with another root signs
// signatures that its public key (PK.seed ‖ PK.root, computed from it)
// never verifies. It costs one key generation, paid when a key is
// created or unwrapped, not when it is used.
func slhdsaRootMatches(k Key, val []byte) bool {
	id, err := slhdsaIDOf(k)
	if err != nil {
		return false
	}
	n := id.Scheme().PublicKeySize() / 2
	if len(val) != 4*n {
		return false
	}
	_, sk, err := slhdsa.GenerateKey(bytes.NewReader(val[:3*n]), id)
	if err != nil {
		return false
	}
	again, _ := sk.MarshalBinary()
	defer wipe(again)
	return bytes.Equal(again, val)
}

// PQCSizes reports a post-quantum key's parameter set name and the sizes
// of its public key, private key (CKA_VALUE) and signature or
// ciphertext, in bytes; ok is false for other keys.
func PQCSizes(k Key) (name string, pub, priv, out int, ok bool) {
	set, _ := parameterSet(k)
	switch k.KeyType() {
	case ck.CKK_ML_DSA:
		if p, found := mldsaSets[set]; found {
			return p.name, p.scheme.PublicKeySize(), p.scheme.PrivateKeySize(), p.sigLen, true
		}
	case ck.CKK_ML_KEM:
		if p, found := mlkemSets[set]; found {
			return p.name, p.circl.PublicKeySize(), p.circl.PrivateKeySize(), p.circl.CiphertextSize(), true
		}
	case ck.CKK_SLH_DSA:
		if id, found := slhdsaID(set); found {
			s := id.Scheme()
			return id.String(), s.PublicKeySize(), s.PrivateKeySize(), s.SignatureSize(), true
		}
	}
	return "", 0, 0, 0, false
}

// PQCSetName names a post-quantum parameter set ("ML-DSA-65",
// "SLH-DSA-SHA2-128s"); "" for one the token lacks.
func PQCSetName(kt, set uint64) string {
	name, _, _, _, _ := PQCSizes(&mapKey{kt: kt, m: map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set)}})
	return name
}

// mapKey is a key being created, as a mechanism reads it: its template.
type mapKey struct {
	class, kt uint64
	m         map[uint64][]byte
}

func (k *mapKey) Class() uint64   { return k.class }
func (k *mapKey) KeyType() uint64 { return k.kt }
func (k *mapKey) Attr(t uint64) ([]byte, bool) {
	v, ok := k.m[t]
	return v, ok
}
func (k *mapKey) Memo(_ string, parse func() (any, error)) (any, error) { return parse() }

// The OIDs NIST assigned (Computer Security Objects Register): ML-DSA and
// SLH-DSA under sigAlgs (2.16.840.1.101.3.4.3), ML-KEM under kems
// (2.16.840.1.101.3.4.4). Their AlgorithmIdentifiers have no parameters,
// as the IETF's X.509 profiles (RFC 9909 for SLH-DSA) give them.
var (
	nistSigAlgs = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3}
	nistKEMs    = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 4}
)

func nistOID(arc asn1.ObjectIdentifier, n int) asn1.ObjectIdentifier {
	return append(slices.Clone(arc), n)
}

// slhdsaOIDs are the sigAlgs arcs of the SLH-DSA sets, by
// CKA_PARAMETER_SET: SHA2-128s is 20, SHA2-128f 21, ..., SHAKE-256f 31.
var slhdsaOIDs = map[uint64]int{
	ck.CKP_SLH_DSA_SHA2_128S: 20, ck.CKP_SLH_DSA_SHA2_128F: 21,
	ck.CKP_SLH_DSA_SHA2_192S: 22, ck.CKP_SLH_DSA_SHA2_192F: 23,
	ck.CKP_SLH_DSA_SHA2_256S: 24, ck.CKP_SLH_DSA_SHA2_256F: 25,
	ck.CKP_SLH_DSA_SHAKE_128S: 26, ck.CKP_SLH_DSA_SHAKE_128F: 27,
	ck.CKP_SLH_DSA_SHAKE_192S: 28, ck.CKP_SLH_DSA_SHAKE_192F: 29,
	ck.CKP_SLH_DSA_SHAKE_256S: 30, ck.CKP_SLH_DSA_SHAKE_256F: 31,
}

// pqcPublicBytes is a post-quantum key's public key, FIPS-encoded, and
// the OID of its parameter set: a public key object's CKA_VALUE, or
// computed from a private key object's material.
func pqcPublicBytes(k Key) ([]byte, asn1.ObjectIdentifier, error) {
	set, _ := parameterSet(k)
	priv := k.Class() == ck.CKO_PRIVATE_KEY
	switch k.KeyType() {
	case ck.CKK_ML_DSA:
		if _, ok := mldsaSets[set]; !ok {
			return nil, nil, errKeyBroken
		}
		oid := nistOID(nistSigAlgs, 16+int(set)) // ML-DSA-44 is 17
		if !priv {
			return value(k), oid, nil
		}
		sk, err := mldsaPrivate(k)
		if err != nil {
			return nil, nil, err
		}
		pk, _ := sk.Public().(sign.PublicKey).MarshalBinary()
		return pk, oid, nil
	case ck.CKK_ML_KEM:
		p, ok := mlkemSets[set]
		if !ok {
			return nil, nil, errKeyBroken
		}
		oid := nistOID(nistKEMs, int(set)) // ML-KEM-512 is 1
		if !priv {
			return value(k), oid, nil
		}
		var sk kem.PrivateKey
		if seed, _ := k.Attr(ck.CKA_SEED); len(seed) == mlkemSeedLen {
			_, sk = p.circl.DeriveKeyPair(seed)
		} else if sk, _ = p.circl.UnmarshalBinaryPrivateKey(value(k)); sk == nil {
			return nil, nil, errKeyBroken
		}
		pk, _ := sk.Public().MarshalBinary()
		return pk, oid, nil
	case ck.CKK_SLH_DSA:
		arc, ok := slhdsaOIDs[set]
		if !ok {
			return nil, nil, errKeyBroken
		}
		oid := nistOID(nistSigAlgs, arc)
		if !priv {
			return value(k), oid, nil
		}
		sk, err := slhdsaPrivate(k)
		if err != nil {
			return nil, nil, err
		}
		pk, _ := sk.PublicKey().MarshalBinary()
		return pk, oid, nil
	}
	return nil, nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
}

// PublicKeyInfo is an asymmetric key's public half as a DER
// SubjectPublicKeyInfo: crypto/x509's encoding, and for the post-quantum
// keys, which it lacks, the OID of the parameter set and the FIPS
// encoding of the public key.
func PublicKeyInfo(k Key) ([]byte, error) {
	switch k.KeyType() {
	case ck.CKK_ML_DSA, ck.CKK_ML_KEM, ck.CKK_SLH_DSA:
		pk, oid, err := pqcPublicBytes(k)
		if err != nil {
			return nil, err
		}
		return asn1.Marshal(struct {
			Algorithm pkix.AlgorithmIdentifier
			PublicKey asn1.BitString
		}{pkix.AlgorithmIdentifier{Algorithm: oid}, asn1.BitString{Bytes: pk, BitLength: 8 * len(pk)}})
	}
	pub, err := PublicKey(k)
	if err != nil {
		return nil, err
	}
	return x509.MarshalPKIXPublicKey(pub)
}
