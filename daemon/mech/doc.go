// Package mech is every mechanism hsmemu offers, each a value in one
// table (Table), pure over a small Key interface.
//
// A mechanism only computes. Everything around it is the token engine's
// (daemon/token), done once for all of them: sessions and their operation
// slots, finding the key behind a handle and deciding whether the caller
// may use it for this (its class and key type, CKA_SIGN and kin,
// CKA_ALLOWED_MECHANISMS, CKA_ALWAYS_AUTHENTICATE), the size-query
// convention, and ending an operation when the specification says it
// ends. So a mechanism sees a Key, which is its attributes, sealed ones
// included, and a memo for what it parses from them; and the call's
// parameters, as the wire decoded them. It answers with a ck.Error where
// the specification names the outcome.
//
// That is why this package imports only the constants (cryptoki/ck), the
// codec's types (cryptoki/wire), the standard library and crypto
// libraries (golang.org/x/crypto, cloudflare/circl, filippo.io/mldsa,
// decred's secp256k1: TestDependencies holds it to that), and why its tests need no TPM, no
// database and no socket: Wycheproof's vectors, NIST's CAVP files and the
// RFCs' known answers run here, in process, against the same
// constructors the engine calls.
//
// The families, one file each:
//   - digest.go: SHA-1, SHA-2 (SHA-512/224 and SHA-512/256 among them)
//     and SHA-3 digests;
//   - sym.go (what they share), aes.go (AES key generation, ECB, CBC,
//     CBC_PAD, CTR, GCM; generic secret key generation), des.go (single
//     and triple DES, legacy), chacha.go (ChaCha20 and
//     ChaCha20-Poly1305), mac.go (HMAC over SHA-1, SHA-2 and SHA-3 with
//     the HMAC key types' generation, AES-CMAC), aeskw.go (AES key wrap,
//     with and without padding), hkdf.go (HKDF);
//   - asym.go (what they share), rsa.go and rsasign.go (RSA key pairs,
//     PKCS#1 v1.5, PSS, OAEP, RSA-AES key wrap; the private operation in
//     OpenSSL through internal/rsaraw), ec.go, nonces.go and ecverify.go
//     (the short Weierstrass curves, Ed25519 and Ed448: ECDSA with
//     precomputed nonces on the curves crypto/ecdh has, made on P-256
//     and P-521 by internal/ecnonce's idle-priority thread, and verification
//     through OpenSSL's internal/ecverify on P-256 and P-521, EdDSA,
//     ECDH), secp256k1.go,
//     montgomery.go (X25519, X448), dsa.go (DSA, legacy);
//   - key.go (the Key interface and the parsing of key material) and
//     encode.go (keys to and from their encodings: PKCS#8 for wrapping,
//     attributes for import, a key's public half).
//
// There are two tables. New makes the modern one; Table.WithLegacy the
// legacy one, which adds the legacy algorithms (single and triple DES,
// DSA, RSA keys of 1024 bits, SHA-1 in new signatures) and shares the
// modern table's background work. The engine gives each token one of
// them (docs/mechanisms.md, "The legacy policy"); a mechanism's policy is
// fixed when its table is built, so no mechanism asks.
//
// A Table owns what runs in the background, the ECDSA nonce fillers: the
// engine makes one with New and stops it with Close.
//
// Sizes in CK_MECHANISM_INFO follow the specification: bytes for AES and
// DES mechanisms and for the HMAC and ChaCha20 key generations, bits for
// those taking generic secret keys (HMAC, HKDF and generic secret key
// generation), for ChaCha20's ciphers, for RSA (the modulus), DSA (the
// prime) and EC (the order of the curve's base point; the curve's size
// for Edwards and Montgomery curves). docs/mechanisms.md's table of every
// mechanism is made from the tables (TestMechanismDoc).
package mech
