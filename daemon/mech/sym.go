package mech

import (
	"crypto/aes"
	"crypto/cipher"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Secret-key mechanisms. The family is split by what the mechanisms do:
//   - aes.go: AES key generation and the cipher modes ECB, CBC,
//     CBC_PAD, CTR and GCM, plus generic secret key generation;
//   - des.go: single and triple DES (legacy tables only): key
//     generation, ECB, CBC, CBC_PAD and CMAC;
//   - chacha.go: ChaCha20 key generation, the stream cipher, and
//     ChaCha20-Poly1305;
//   - mac.go: HMAC over SHA-1, SHA-2 and SHA-3 with their key
//     generation, and AES-CMAC;
//   - aeskw.go: AES key wrap (RFC 3394) and key wrap with padding
//     (RFC 5649), and CBC_PAD as a wrapping mechanism;
//   - hkdf.go: HKDF key derivation.
//
// Sizes in CK_MECHANISM_INFO follow the specification: bytes for AES,
// DES, HMAC key generation and ChaCha20 key generation, bits for those
// taking generic secret keys (HMAC, HKDF and generic secret key
// generation) and for ChaCha20's ciphers.

// symmetricMechanisms lists the secret-key mechanisms.
func symmetricMechanisms(p policy) map[uint64]*Mechanism {
	t := merge(map[uint64]*Mechanism{},
		aesMechanisms(),
		chachaMechanisms(),
		macMechanisms(),
		keyWrapMechanisms(),
		hkdfMechanisms(),
	)
	if p.legacy {
		merge(t, desMechanisms())
	}
	return t
}

// Key sizes in CK_MECHANISM_INFO.
const (
	aesMinBytes = 16
	aesMaxBytes = 32
	// maxGenericBytes bounds generic secret keys hsmemu makes or uses:
	// 64 KiB is far beyond any HMAC or HKDF key worth having.
	maxGenericBytes = 64 << 10
)

var (
	aesOnly     = []uint64{ck.CKK_AES}
	genericOnly = []uint64{ck.CKK_GENERIC_SECRET}
)

// maxBuffered bounds what a buffering operation (GCM, key wrap used to
// encrypt) holds across C_*Update calls: four of the largest frames.
const maxBuffered = 4 * wire.MaxBytes

// aesInfo is the mechanism information of an AES mechanism.
func aesInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: aesMinBytes, MaxKeySize: aesMaxBytes, Flags: flags}
}

// aesBlock returns the AES cipher of a key's value. The key schedule is
// kept with the object, like any parsed key: a cipher.Block is safe for
// concurrent use.
func aesBlock(k Key) (cipher.Block, error) {
	if k.KeyType() != ck.CKK_AES {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	return memoKey(k, "aes", parseAES)
}

func parseAES(k Key) (cipher.Block, error) {
	b, err := aes.NewCipher(value(k))
	if err != nil {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return b, nil
}

// bytesParam returns a byte-string parameter of exactly size bytes.
func bytesParam(m *wire.Mechanism, size int) ([]byte, error) {
	if !m.Present || len(m.Param.Bytes) != size {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return m.Param.Bytes, nil
}

// optionalParam returns a byte-string parameter of exactly size bytes, or
// def when there is none.
func optionalParam(m *wire.Mechanism, size int, def []byte) ([]byte, error) {
	if !m.Present {
		return def, nil
	}
	return bytesParam(m, size)
}

// paramErr turns a typed parameter accessor's error into the CK_RV.
func paramErr(err error) error {
	if err != nil {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return nil
}

// lenErr is the error for an input of the wrong length: the plaintext's
// on encryption, the ciphertext's on decryption.
func lenErr(decrypt bool) error {
	if decrypt {
		return ck.Error(ck.CKR_ENCRYPTED_DATA_LEN_RANGE)
	}
	return ck.Error(ck.CKR_DATA_LEN_RANGE)
}

// buffer collects a buffering operation's input, within maxBuffered.
type buffer struct {
	buf     []byte
	decrypt bool
}

func (b *buffer) add(in []byte) error {
	if len(b.buf)+len(in) > maxBuffered {
		return lenErr(b.decrypt)
	}
	b.buf = append(b.buf, in...)
	return nil
}

// take returns what was collected and forgets it; the caller wipes it.
func (b *buffer) take() []byte {
	v := b.buf
	b.buf = nil
	return v
}

// oneShotCipher turns a single-part cipher function into a CipherOp whose
// multi-part form buffers everything and computes at Final: the output of
// GCM and key wrap depends on the whole input, and a decryption must not
// release any plaintext before it is authenticated.
type oneShotCipher struct {
	buffer
	one  func(in []byte) ([]byte, error)
	mark int // the input held at Mark (rewind.go)
}

func (c *oneShotCipher) One(in []byte) ([]byte, error) { return c.one(in) }

func (c *oneShotCipher) Update(in []byte) ([]byte, error) { return nil, c.add(in) }

func (c *oneShotCipher) Buffered() (input, memory int) { return len(c.buf), cap(c.buf) }

// Final computes over the input held, and keeps it until the operation
// ends (Wipe): a Final that was only measured may be followed by more
// input (Rewind, to the mark the engine sets before a Final).
func (c *oneShotCipher) Final() ([]byte, error) {
	return c.one(c.buf)
}

// Wipe clears the input held.
func (c *oneShotCipher) Wipe() {
	wipe(c.take())
}
