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
// libraries (TestDependencies holds it to that), and why its tests need
// no TPM, no database and no socket: Wycheproof's vectors, NIST's CAVP key
// wrap files and the RFCs' known answers run here, in process, against the
// same constructors the engine calls.
//
// The families, one file each:
//   - digest.go: SHA-1, SHA-2 and SHA-3 digests;
//   - sym.go (what they share), aes.go (AES key generation, ECB, CBC,
//     CBC_PAD, CTR, GCM; generic secret key generation), mac.go (HMAC,
//     AES-CMAC), aeskw.go (AES key wrap, with and without padding),
//     hkdf.go (HKDF);
//   - asym.go (what they share), rsa.go and rsasign.go (RSA key pairs,
//     PKCS#1 v1.5, PSS, OAEP, RSA-AES key wrap; the private operation in
//     OpenSSL through internal/rsaraw), ec.go and nonces.go (NIST curves
//     and Ed25519: ECDSA with precomputed nonces, EdDSA, ECDH);
//   - key.go (the Key interface and the parsing of key material) and
//     encode.go (keys to and from their encodings: PKCS#8 for wrapping,
//     attributes for import, a key's public half).
//
// A Table owns what runs in the background, the ECDSA nonce fillers: the
// engine makes one with New and stops it with Close.
//
// Sizes in CK_MECHANISM_INFO follow the specification: bytes for AES
// mechanisms, bits for those taking generic secret keys (HMAC, HKDF and
// generic secret key generation), for RSA (the modulus) and for EC (the
// order of the curve's base point).
package mech
