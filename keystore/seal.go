package keystore

import (
	"bytes"
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
	// legacy are the PIN keys of earlier KEK generations that PIN records
	// written before a master key rotation are still under, by generation.
	legacy map[uint32][]byte
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
	for _, l := range k.legacy {
		wipe(l)
	}
}

// pinKeyFor returns the PIN key of a KEK generation: this one's, or a
// legacy one.
func (k *tokenKeys) pinKeyFor(gen uint32) ([]byte, bool) {
	if gen == k.generation {
		return k.pinKey, true
	}
	l, ok := k.legacy[gen]
	return l, ok
}

// The legacy PIN keys are stored sealed under the KEK's seal key:
//
//	nonce (12) | GCM(count u8 | per key: generation u32 | key (32)), aad "hsmemu/legacy-pin/v1" | token uuid | KEK generation
func legacyAAD(token UUID, gen uint32) []byte {
	aad := append([]byte("hsmemu/legacy-pin/v1"), token[:]...)
	return binary.BigEndian.AppendUint32(aad, gen)
}

func (k *tokenKeys) sealLegacy(token UUID) ([]byte, error) {
	if len(k.legacy) == 0 {
		return nil, nil
	}
	plain := []byte{byte(len(k.legacy))}
	for gen, key := range k.legacy {
		plain = binary.BigEndian.AppendUint32(plain, gen)
		plain = append(plain, key...)
	}
	defer wipe(plain)
	nonce := make([]byte, gcmNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return k.seal.Seal(nonce, nonce, plain, legacyAAD(token, k.generation)), nil
}

func (k *tokenKeys) openLegacy(token UUID, blob []byte) error {
	if blob == nil {
		return nil
	}
	if len(blob) < gcmNonceLen+gcmTagLen {
		return ErrTampered
	}
	plain, err := k.seal.Open(nil, blob[:gcmNonceLen], blob[gcmNonceLen:], legacyAAD(token, k.generation))
	if err != nil || len(plain) < 1 || len(plain) != 1+int(plain[0])*36 {
		return ErrTampered
	}
	defer wipe(plain)
	k.legacy = map[uint32][]byte{}
	for p := plain[1:]; len(p) > 0; p = p[36:] {
		k.legacy[binary.BigEndian.Uint32(p)] = bytes.Clone(p[4:36])
	}
	return nil
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

// A blob sealed under another generation of key than the sealer's (data
// key, or KEK) is tampering, or a race with a rotation: a row read before
// the rotation committed (errStaleRow), or keys taken before it installed
// the new ones (errNewerKeys). Open retries both; to anyone else they are
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
	case kindTag, kindKEK:
		switch {
		case kind == kindTag && len(blob) != sealHeaderLen+macTagLen, kind == kindKEK && private:
			return nil, ErrTampered
		case gen < s.keys.generation:
			return nil, errStaleRow
		case gen > s.keys.generation:
			return nil, errNewerKeys
		}
		if kind == kindKEK {
			aead = s.keys.seal
		}
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
