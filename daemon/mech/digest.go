package mech

import (
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"hash"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// Digests: SHA-1, SHA-2 (SHA-512/224 and SHA-512/256 among them) and
// SHA-3, single- and multi-part, and C_DigestKey.

type hashDigest struct{ h hash.Hash }

func (d hashDigest) Update(in []byte) { d.h.Write(in) }
func (d hashDigest) Sum() []byte      { return d.h.Sum(nil) }

// hashes are the digest mechanisms and their constructors; the signature
// families use them too.
var hashes = map[uint64]func() hash.Hash{
	ck.CKM_SHA_1:      sha1.New,
	ck.CKM_SHA224:     sha256.New224,
	ck.CKM_SHA256:     sha256.New,
	ck.CKM_SHA384:     sha512.New384,
	ck.CKM_SHA512:     sha512.New,
	ck.CKM_SHA512_224: sha512.New512_224,
	ck.CKM_SHA512_256: sha512.New512_256,
	ck.CKM_SHA3_224:   func() hash.Hash { return sha3.New224() },
	ck.CKM_SHA3_256:   func() hash.Hash { return sha3.New256() },
	ck.CKM_SHA3_384:   func() hash.Hash { return sha3.New384() },
	ck.CKM_SHA3_512:   func() hash.Hash { return sha3.New512() },
}

// noParam refuses a parameter where a mechanism takes none.
func noParam(m *wire.Mechanism) error {
	if m.Present {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return nil
}

func digestMechanisms(policy) map[uint64]*Mechanism {
	t := map[uint64]*Mechanism{}
	for typ, h := range hashes {
		t[typ] = &Mechanism{
			info: wire.MechanismInfo{Flags: ck.CKF_DIGEST},
			digest: func(m *wire.Mechanism) (DigestOp, error) {
				if err := noParam(m); err != nil {
					return nil, err
				}
				return hashDigest{h()}, nil
			},
		}
	}
	return t
}
