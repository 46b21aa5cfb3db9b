// Package escrow splits the master secret of an hsmemu security domain among
// custodians, so that losing the TPM does not mean losing every key.
//
// The master key lives inside the TPM, and by design nothing can read it back
// out. That is what makes the TPM worth having, and also what makes a failed
// motherboard fatal. The daemon therefore generates the 32-byte master secret
// itself, loads it into the TPM, and at that one moment (and at every
// rotation) hands it to Split before wiping it. Split cuts the secret into N
// shares with Shamir's secret sharing, any M of which recreate it, and
// encrypts each share to one custodian's public key. The custodians keep the
// files; the daemon keeps only the Metadata, which says who holds what.
//
// To bring the domain into a new TPM, M custodians each run DecryptShare with
// their private key, and Combine recreates the secret. Combine checks the
// result against the domain identifier, DomainID, which is an HMAC of a fixed
// label under the secret. The TPM computes the same HMAC over the key it
// holds, so the daemon can tell which domain a TPM carries without ever
// seeing the key, and Combine can tell a wrong or corrupted share from a right
// one: Shamir's scheme on its own would silently produce a different secret.
//
// The arithmetic is over GF(2^8), one independent polynomial per byte of the
// secret. Multiplication is bit-serial rather than table-driven, so no memory
// access depends on a secret byte. With fewer than M shares every candidate
// secret is equally likely; that is the information-theoretic guarantee of
// the scheme, and the reason it needs no key of its own.
//
// Each share is a 67-byte record (version, domain identifier, threshold,
// index, value), encrypted with HPKE (RFC 9180: DHKEM on the custodian's
// curve, HKDF-SHA256, AES-256-GCM) for X25519 and NIST curve keys, or with
// RSA-OAEP-SHA256 for RSA keys of at least 2048 bits. The file is a PEM block
// of type "HSMEMU ESCROW SHARE" whose headers say in clear which domain,
// index, threshold and custodian it belongs to, so that a person holding five
// of these files can tell them apart. Those headers are the HPKE info or the
// OAEP label, and the decrypted record is compared with them, so a file whose
// headers were edited does not decrypt. The file must also be in the exact
// form Split wrote (up to line endings and surrounding whitespace): there is
// one way to write each share, and nothing else parses.
//
// Encryption to a public key says nothing about who encrypted: anyone with a
// custodian's public key can write a share file that opens with the
// custodian's private key. What such a file cannot do is take part in a
// recovery, because only the real secret has the real domain id, and Combine
// refuses any set of shares that recreates something else.
//
// Recovery files outlive the software that wrote them. The format is
// versioned, and testdata holds files written by this package that every
// later version must still open.
package escrow
