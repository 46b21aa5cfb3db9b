package mech

import (
	"crypto/cipher"
	"encoding/binary"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// ChaCha20 (PKCS#11 3.0): key generation, the stream cipher CKM_CHACHA20
// with CK_CHACHA20_PARAMS, and the AEAD CKM_CHACHA20_POLY1305 (RFC 8439,
// and XChaCha20-Poly1305 for a 24-byte nonce) with
// CK_SALSA20_CHACHA20_POLY1305_PARAMS. The primitives are
// golang.org/x/crypto's.
//
// CKM_CHACHA20 takes the three variants of the specification's table: a
// 96-bit nonce with a 32-bit block counter (RFC 8439), a 64-bit nonce with
// a 64-bit counter (the original), and a 192-bit nonce (XChaCha20) with a
// 32- or 64-bit counter. The counter is given as the bytes of the state's
// words, little-endian, as NSS and QUIC's header protection give it. The
// cipher refuses data that would carry out of the counter's low 32 bits
// (256 GiB from counter 0): x/crypto's counter is those 32 bits.
//
// CKM_CHACHA20_POLY1305's nonce is 12 or 24 bytes; the original 64-bit
// nonce construction is not offered. Its multi-part form buffers, as GCM's
// does: no plaintext leaves a decryption before its tag is checked.

const chachaKeyBytes = chacha20.KeySize

var chachaOnly = []uint64{ck.CKK_CHACHA20}

func chachaMechanisms() map[uint64]*Mechanism {
	bits := wire.MechanismInfo{MinKeySize: 8 * chachaKeyBytes, MaxKeySize: 8 * chachaKeyBytes, Flags: ck.CKF_ENCRYPT | ck.CKF_DECRYPT}
	return map[uint64]*Mechanism{
		ck.CKM_CHACHA20_KEY_GEN: {
			info:       wire.MechanismInfo{MinKeySize: chachaKeyBytes, MaxKeySize: chachaKeyBytes, Flags: ck.CKF_GENERATE},
			genKeyType: ck.CKK_CHACHA20,
			generate:   generateChaCha,
		},
		ck.CKM_CHACHA20: {
			info: bits, keyTypes: chachaOnly,
			encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newChaChaOp(k, m, false) },
			decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newChaChaOp(k, m, true) },
		},
		ck.CKM_CHACHA20_POLY1305: {
			info: bits, keyTypes: chachaOnly,
			encrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newChaChaPolyOp(k, m, false) },
			decrypt: func(k Key, m *wire.Mechanism) (CipherOp, error) { return newChaChaPolyOp(k, m, true) },
			message: newChaChaMessage,
		},
	}
}

// generateChaCha makes a 256-bit key; a template's CKA_VALUE_LEN, if any,
// must say 32.
func generateChaCha(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	if err := noParam(m); err != nil {
		return nil, err
	}
	if _, given := tmpl[ck.CKA_VALUE_LEN]; given {
		n, err := valueLen(tmpl)
		if err != nil {
			return nil, err
		}
		if n != chachaKeyBytes {
			return nil, ck.Error(ck.CKR_ATTRIBUTE_VALUE_INVALID)
		}
	}
	return randomValue(chachaKeyBytes)
}

// chachaKey is a CKK_CHACHA20 key's value.
func chachaKey(k Key) ([]byte, error) {
	if k.KeyType() != ck.CKK_CHACHA20 {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	v := value(k)
	if len(v) != chachaKeyBytes {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return v, nil
}

// chachaOp is CKM_CHACHA20 either way: a key stream, bounded by the
// blocks its counter has left.
type chachaOp struct {
	c       *chacha20.Cipher
	blocks  uint64 // blocks the counter has left
	done    uint64 // bytes processed
	decrypt bool
	// The state at Mark (rewind.go).
	mark     chacha20.Cipher
	markDone uint64
}

func newChaChaOp(k Key, m *wire.Mechanism, decrypt bool) (CipherOp, error) {
	key, err := chachaKey(k)
	if err != nil {
		return nil, err
	}
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.ChaCha20Params()
	if err != nil {
		return nil, paramErr(err)
	}
	var low, high uint32
	switch len(p.BlockCounter) {
	case 4:
		low = binary.LittleEndian.Uint32(p.BlockCounter)
	case 8:
		low = binary.LittleEndian.Uint32(p.BlockCounter)
		high = binary.LittleEndian.Uint32(p.BlockCounter[4:])
	default:
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	// Every variant is RFC 8439's state, whose 96-bit nonce then holds
	// the 64-bit counter's high word before a 64-bit nonce.
	subkey, nonce := key, make([]byte, chacha20.NonceSize)
	switch len(p.Nonce) {
	case chacha20.NonceSize:
		if len(p.BlockCounter) != 4 {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		copy(nonce, p.Nonce)
	case 8:
		binary.LittleEndian.PutUint32(nonce, high)
		copy(nonce[4:], p.Nonce)
	case chacha20.NonceSizeX:
		if subkey, err = chacha20.HChaCha20(key, p.Nonce[:16]); err != nil {
			return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
		}
		defer wipe(subkey)
		binary.LittleEndian.PutUint32(nonce, high)
		copy(nonce[4:], p.Nonce[16:])
	default:
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	c, err := chacha20.NewUnauthenticatedCipher(subkey, nonce)
	if err != nil {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	c.SetCounter(low)
	return &chachaOp{c: c, blocks: 1<<32 - uint64(low), decrypt: decrypt}, nil
}

func (op *chachaOp) Update(in []byte) ([]byte, error) {
	total := op.done + uint64(len(in))
	if (total+63)/64 > op.blocks {
		return nil, lenErr(op.decrypt)
	}
	out := make([]byte, len(in))
	op.c.XORKeyStream(out, in)
	op.done = total
	return out, nil
}

func (op *chachaOp) Final() ([]byte, error) { return []byte{}, nil }

func newChaChaPolyOp(k Key, m *wire.Mechanism, decrypt bool) (*oneShotCipher, error) {
	key, err := chachaKey(k)
	if err != nil {
		return nil, err
	}
	if !m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	p, err := m.Param.ChaCha20Poly1305Params()
	if err != nil {
		return nil, paramErr(err)
	}
	var aead cipher.AEAD
	switch len(p.Nonce) {
	case chacha20poly1305.NonceSize:
		aead, err = chacha20poly1305.New(key)
	case chacha20poly1305.NonceSizeX:
		aead, err = chacha20poly1305.NewX(key)
	default:
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if err != nil {
		return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
	}
	return aeadOneShot(aead, p.Nonce, p.AAD, decrypt), nil
}
