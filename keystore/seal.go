package keystore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
)

// ErrTampered is returned when stored data fails authentication: a sealed
// blob or tag that does not match its object, its token or its attributes.
// It carries no detail on purpose; whoever edited the database learns nothing
// about which check caught them.
var ErrTampered = errors.New("keystore: stored object failed authentication (database edited or corrupted)")

// A sealed blob is
//
//	version u8 | kind u8 | generation u32 | body
//
// where body is nonce(12) | AES-256-GCM ciphertext | tag(16) for the sealed
// kinds, and an HMAC-SHA256 tag(32) for kindTag. The six header bytes are part
// of the associated data, so none of them can be changed without detection.
const (
	sealVersion   = 1
	sealHeaderLen = 6
	gcmNonceLen   = 12
	gcmTagLen     = 16
	macTagLen     = sha256.Size
)

// Blob kinds: which key protects the object. The kind is authenticated and
// must agree with the object's CKA_PRIVATE.
const (
	kindKEK  = 1 // secret material of a public object, under the token KEK
	kindData = 2 // secret material of a private object, under the token data key
	kindTag  = 3 // no secret material: an HMAC tag under the token KEK
)

const objectAADLabel = "hsmemu/object/v1"

// objectAAD builds the associated data that binds a blob to its token, its
// object and every one of its attributes.
func objectAAD(dst []byte, header []byte, token, object UUID, attrs []byte) []byte {
	sum := sha256.Sum256(attrs)
	dst = append(dst, objectAADLabel...)
	dst = append(dst, header...)
	dst = append(dst, token[:]...)
	dst = append(dst, object[:]...)
	return append(dst, sum[:]...)
}

// tokenKeys holds the keys derived from one token's KEK. They live only in
// memory; the KEK itself is recomputed by the TPM when needed.
type tokenKeys struct {
	generation uint32
	seal       cipher.AEAD // AES-256-GCM for public objects' secrets
	macKey     []byte      // HMAC-SHA256 key for tags
	pinKey     []byte      // input to the PIN wrapping keys
}

func newTokenKeys(kek []byte, generation uint32) (*tokenKeys, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("keystore: KEK is %d bytes, want 32", len(kek))
	}
	// One KEK, three purposes: separate them so no key is ever used by
	// two algorithms.
	sealKey, err := hkdf.Expand(sha256.New, kek, "hsmemu/kek/seal/v1", 32)
	if err != nil {
		return nil, err
	}
	defer wipe(sealKey)
	aead, err := newGCM(sealKey)
	if err != nil {
		return nil, err
	}
	macKey, err := hkdf.Expand(sha256.New, kek, "hsmemu/kek/mac/v1", 32)
	if err != nil {
		return nil, err
	}
	pinKey, err := hkdf.Expand(sha256.New, kek, "hsmemu/kek/pin/v1", 32)
	if err != nil {
		return nil, err
	}
	return &tokenKeys{generation: generation, seal: aead, macKey: macKey, pinKey: pinKey}, nil
}

func (k *tokenKeys) wipe() {
	wipe(k.macKey)
	wipe(k.pinKey)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithTagSize(block, gcmTagLen)
}

// sealer is the key material one seal or open needs: the token keys and,
// for private objects, the token data key.
type sealer struct {
	token UUID
	keys  *tokenKeys
	data  cipher.AEAD // nil while the token is not logged in
	dgen  uint32
	rand  io.Reader // nonces; nil means crypto/rand
}

// A blob sealed under another data key generation than the sealer's is
// tampering, or a race with a data key rotation: a row read before the
// rotation committed (errStaleRow), or keys taken before it installed the
// new key (errNewerKeys). Open retries both; to anyone else they are
// ErrTampered.
var (
	errStaleRow  = fmt.Errorf("%w: sealed under an older data key", ErrTampered)
	errNewerKeys = fmt.Errorf("%w: sealed under a newer data key", ErrTampered)
)

// seal protects secret (which may be empty: then the object gets a tag) for
// object with the given canonical attribute encoding.
func (s *sealer) seal(object UUID, private bool, attrs, secret []byte) ([]byte, error) {
	var kind byte
	var aead cipher.AEAD
	gen := s.keys.generation
	switch {
	case len(secret) == 0:
		kind = kindTag
	case private:
		if s.data == nil {
			return nil, ErrNotLoggedIn
		}
		kind, aead, gen = kindData, s.data, s.dgen
	default:
		kind, aead = kindKEK, s.keys.seal
	}
	header := []byte{sealVersion, kind, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(header[2:], gen)
	aad := objectAAD(make([]byte, 0, 128), header, s.token, object, attrs)
	if kind == kindTag {
		m := hmac.New(sha256.New, s.keys.macKey)
		m.Write(aad)
		return m.Sum(header), nil
	}
	out := make([]byte, sealHeaderLen+gcmNonceLen, sealHeaderLen+gcmNonceLen+len(secret)+gcmTagLen)
	copy(out, header)
	nonce := out[sealHeaderLen:]
	if s.rand != nil {
		if _, err := io.ReadFull(s.rand, nonce); err != nil {
			return nil, err
		}
	} else if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(out, nonce, secret, aad), nil
}

// open authenticates blob against its object and returns the secret material
// (nil for a tagged object), decrypted in place in blob, which it
// overwrites. scratch is reused for the associated data.
func (s *sealer) open(object UUID, private bool, attrs, blob []byte, mac hash.Hash, scratch []byte) ([]byte, error) {
	if len(blob) < sealHeaderLen || blob[0] != sealVersion {
		return nil, ErrTampered
	}
	kind := blob[1]
	gen := binary.BigEndian.Uint32(blob[2:])
	var aead cipher.AEAD
	switch kind {
	case kindTag:
		if gen != s.keys.generation || len(blob) != sealHeaderLen+macTagLen {
			return nil, ErrTampered
		}
	case kindKEK:
		if private || gen != s.keys.generation {
			return nil, ErrTampered
		}
		aead = s.keys.seal
	case kindData:
		if !private {
			return nil, ErrTampered
		}
		if s.data == nil {
			return nil, ErrNotLoggedIn
		}
		switch {
		case gen < s.dgen:
			return nil, errStaleRow
		case gen > s.dgen:
			return nil, errNewerKeys
		}
		aead = s.data
	default:
		return nil, ErrTampered
	}
	aad := objectAAD(scratch[:0], blob[:sealHeaderLen], s.token, object, attrs)
	if kind == kindTag {
		if mac == nil {
			mac = hmac.New(sha256.New, s.keys.macKey)
		}
		mac.Reset()
		mac.Write(aad)
		var sum [macTagLen]byte
		if subtle.ConstantTimeCompare(mac.Sum(sum[:0]), blob[sealHeaderLen:]) != 1 {
			return nil, ErrTampered
		}
		return nil, nil
	}
	body := blob[sealHeaderLen:]
	if len(body) < gcmNonceLen+gcmTagLen {
		return nil, ErrTampered
	}
	// Decrypt in place: the blob is the caller's own copy.
	ct := body[gcmNonceLen:]
	pt, err := aead.Open(ct[:0], body[:gcmNonceLen], ct, aad)
	if err != nil {
		return nil, ErrTampered
	}
	return pt, nil
}

// wipe zeroes b. Go gives no guarantee that no copy of a secret survives
// elsewhere, but the buffers the keystore owns do not linger.
func wipe(b []byte) {
	clear(b)
}
