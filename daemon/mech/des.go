package mech

import (
	"bytes"
	"crypto/cipher"
	"crypto/des"
	"crypto/rand"
	"math/bits"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Single DES and two- and three-key triple DES, in legacy tables only
// (Table.WithLegacy): key generation, ECB, CBC, CBC_PAD (which also wraps
// keys, as AES's does) and DES3-CMAC. The cipher is crypto/des.
//
// A CKK_DES key is 8 bytes, CKK_DES2 16 (K1 K2, used as K1 K2 K1) and
// CKK_DES3 24, each DES key with its parity bits set, as the
// specification asks of every DES key; the engine refuses others. Key
// generation sets the parity and makes no weak or semi-weak key, nor a
// triple DES key with two equal neighbours, which would be single DES.
//
// CK_MECHANISM_INFO's key sizes are "not used" for DES in the
// specification; hsmemu reports the key lengths in bytes.

var (
	desOnly  = []uint64{ck.CKK_DES}
	des3Only = []uint64{ck.CKK_DES2, ck.CKK_DES3}
)

func desMechanisms() map[uint64]*Mechanism {
	info := func(min, max uint64, flags uint64) wire.MechanismInfo {
		return wire.MechanismInfo{MinKeySize: min, MaxKeySize: max, Flags: flags}
	}
	enc := uint64(ck.CKF_ENCRYPT | ck.CKF_DECRYPT)
	cmacCtor := func(k Key, m *wire.Mechanism) (SignOp, error) {
		if err := noParam(m); err != nil {
			return nil, err
		}
		b, err := des3Block(k)
		if err != nil {
			return nil, err
		}
		return &macOp{h: newCMAC(b)}, nil
	}
	return map[uint64]*Mechanism{
		ck.CKM_DES_KEY_GEN:  {info: info(8, 8, ck.CKF_GENERATE), genKeyType: ck.CKK_DES, generate: desGenerate(1)},
		ck.CKM_DES2_KEY_GEN: {info: info(16, 16, ck.CKF_GENERATE), genKeyType: ck.CKK_DES2, generate: desGenerate(2)},
		ck.CKM_DES3_KEY_GEN: {info: info(24, 24, ck.CKF_GENERATE), genKeyType: ck.CKK_DES3, generate: desGenerate(3)},
		ck.CKM_DES_ECB:      blockModeMechanism(info(8, 8, enc), desOnly, desBlock, modeECB),
		ck.CKM_DES_CBC:      blockModeMechanism(info(8, 8, enc), desOnly, desBlock, modeCBC),
		ck.CKM_DES_CBC_PAD:  blockModeMechanism(info(8, 8, enc), desOnly, desBlock, modeCBCPad),
		ck.CKM_DES3_ECB:     blockModeMechanism(info(16, 24, enc), des3Only, des3Block, modeECB),
		ck.CKM_DES3_CBC:     blockModeMechanism(info(16, 24, enc), des3Only, des3Block, modeCBC),
		ck.CKM_DES3_CBC_PAD: blockModeMechanism(info(16, 24, enc), des3Only, des3Block, modeCBCPad),
		ck.CKM_DES3_CMAC: {
			info: info(16, 24, ck.CKF_SIGN|ck.CKF_VERIFY), keyTypes: des3Only,
			sign: cmacCtor, verify: cmacCtor,
		},
	}
}

// desBlock is a CKK_DES key's cipher.
func desBlock(k Key) (cipher.Block, error) {
	if k.KeyType() != ck.CKK_DES {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	b, err := k.Memo("des", func() (any, error) {
		b, err := des.NewCipher(value(k))
		if err != nil {
			return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return b.(cipher.Block), nil
}

// des3Block is a CKK_DES2 or CKK_DES3 key's triple DES cipher.
func des3Block(k Key) (cipher.Block, error) {
	kt := k.KeyType()
	if kt != ck.CKK_DES2 && kt != ck.CKK_DES3 {
		return nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	b, err := k.Memo("des3", func() (any, error) {
		v := value(k)
		if (kt == ck.CKK_DES2) != (len(v) == 16) || (kt == ck.CKK_DES3) != (len(v) == 24) {
			return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		key := make([]byte, 24)
		defer wipe(key)
		copy(key, v)
		if len(v) == 16 {
			copy(key[16:], v[:8]) // K1 K2 K1
		}
		b, err := des.NewTripleDESCipher(key)
		if err != nil {
			return nil, ck.Error(ck.CKR_KEY_SIZE_RANGE)
		}
		return b, nil
	})
	if err != nil {
		return nil, err
	}
	return b.(cipher.Block), nil
}

// desGenerate makes a key of n DES keys.
func desGenerate(n int) func(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
	return func(m *wire.Mechanism, tmpl map[uint64][]byte) (map[uint64][]byte, error) {
		if err := noParam(m); err != nil {
			return nil, err
		}
		v := make([]byte, 8*n)
		for {
			rand.Read(v)
			SetDESParity(v)
			if desKeyGood(v) {
				return map[uint64][]byte{ck.CKA_VALUE: v}, nil
			}
		}
	}
}

// desKeyGood refuses weak and semi-weak DES keys, and triple DES keys
// with two equal neighbours (they compute single DES).
func desKeyGood(v []byte) bool {
	for i := 0; i < len(v); i += 8 {
		for _, w := range desWeakKeys {
			if bytes.Equal(v[i:i+8], w[:]) {
				return false
			}
		}
		if i > 0 && bytes.Equal(v[i-8:i], v[i:i+8]) {
			return false
		}
	}
	return true
}

// desWeakKeys are the weak and semi-weak DES keys (NIST SP 800-67, 3.3.2),
// with their parity bits set.
var desWeakKeys = [][8]byte{
	{0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01},
	{0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE, 0xFE},
	{0xE0, 0xE0, 0xE0, 0xE0, 0xF1, 0xF1, 0xF1, 0xF1},
	{0x1F, 0x1F, 0x1F, 0x1F, 0x0E, 0x0E, 0x0E, 0x0E},
	{0x01, 0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E},
	{0x1F, 0x01, 0x1F, 0x01, 0x0E, 0x01, 0x0E, 0x01},
	{0x01, 0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1},
	{0xE0, 0x01, 0xE0, 0x01, 0xF1, 0x01, 0xF1, 0x01},
	{0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE},
	{0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01, 0xFE, 0x01},
	{0x1F, 0xE0, 0x1F, 0xE0, 0x0E, 0xF1, 0x0E, 0xF1},
	{0xE0, 0x1F, 0xE0, 0x1F, 0xF1, 0x0E, 0xF1, 0x0E},
	{0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E, 0xFE},
	{0xFE, 0x1F, 0xFE, 0x1F, 0xFE, 0x0E, 0xFE, 0x0E},
	{0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1, 0xFE},
	{0xFE, 0xE0, 0xFE, 0xE0, 0xFE, 0xF1, 0xFE, 0xF1},
}

// SetDESParity sets each byte's low bit so that the byte has an odd
// number of ones, as DES keys have (FIPS 46-3).
func SetDESParity(v []byte) {
	for i, b := range v {
		v[i] = b&0xFE | byte(bits.OnesCount8(b&0xFE)+1)&1
	}
}

// DESParityOK reports whether every byte of v has odd parity.
func DESParityOK(v []byte) bool {
	for _, b := range v {
		if bits.OnesCount8(b)%2 == 0 {
			return false
		}
	}
	return true
}
