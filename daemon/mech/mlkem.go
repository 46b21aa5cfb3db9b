package mech

import (
	"bytes"
	"crypto/mlkem"
	"crypto/rand"
	"crypto/subtle"

	"github.com/cloudflare/circl/kem"
	"github.com/cloudflare/circl/kem/mlkem/mlkem1024"
	"github.com/cloudflare/circl/kem/mlkem/mlkem512"
	"github.com/cloudflare/circl/kem/mlkem/mlkem768"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// ML-KEM (FIPS 203). ML-KEM-768 and -1024 run on the standard library's
// crypto/mlkem; ML-KEM-512, which it lacks, on circl. circl also gives
// the expanded decapsulation key (FIPS 203's dk, CKA_VALUE), which
// crypto/mlkem keeps to itself, and decapsulates with a key that was
// created from its dk alone (no seed). A private key holds the 64-byte
// seed d‖z (CKA_SEED) and dk (CKA_VALUE).

// mlkemSet is one parameter set.
type mlkemSet struct {
	name  string
	circl kem.Scheme
	// std is the set's size in crypto/mlkem (768, 1024), 0 when it has
	// none.
	std int
}

const mlkemSeedLen = 64

var mlkemSets = map[uint64]*mlkemSet{
	ck.CKP_ML_KEM_512:  {name: "ML-KEM-512", circl: mlkem512.Scheme()},
	ck.CKP_ML_KEM_768:  {name: "ML-KEM-768", circl: mlkem768.Scheme(), std: 768},
	ck.CKP_ML_KEM_1024: {name: "ML-KEM-1024", circl: mlkem1024.Scheme(), std: 1024},
}

func mlkemInfo(flags uint64) wire.MechanismInfo {
	return wire.MechanismInfo{MinKeySize: mlkem512.PublicKeySize, MaxKeySize: mlkem1024.PublicKeySize, Flags: flags}
}

func mlkemMechanisms() map[uint64]*Mechanism {
	return map[uint64]*Mechanism{
		ck.CKM_ML_KEM_KEY_PAIR_GEN: {
			info:         mlkemInfo(ck.CKF_GENERATE_KEY_PAIR),
			genKeyType:   ck.CKK_ML_KEM,
			generatePair: mlkemGeneratePair,
		},
		ck.CKM_ML_KEM: {
			info:          mlkemInfo(ck.CKF_ENCAPSULATE | ck.CKF_DECAPSULATE),
			keyTypes:      []uint64{ck.CKK_ML_KEM},
			encapsulate:   mlkemEncapsulate,
			decapsulate:   mlkemDecapsulate,
			ciphertextLen: mlkemCiphertextLen,
		},
	}
}

func mlkemGeneratePair(m *wire.Mechanism, pub, priv map[uint64][]byte) (map[uint64][]byte, map[uint64][]byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	set, err := templateSet(pub, priv)
	if err != nil {
		return nil, nil, err
	}
	p, ok := mlkemSets[set]
	if !ok {
		return nil, nil, ck.Error(ck.CKR_PARAMETER_SET_NOT_SUPPORTED)
	}
	seed := make([]byte, mlkemSeedLen)
	if _, err := rand.Read(seed); err != nil {
		return nil, nil, ck.Error(ck.CKR_FUNCTION_FAILED)
	}
	pk, sk := p.circl.DeriveKeyPair(seed)
	pkb, _ := pk.MarshalBinary()
	skb, _ := sk.MarshalBinary()
	return map[uint64][]byte{ck.CKA_VALUE: pkb},
		map[uint64][]byte{ck.CKA_PARAMETER_SET: ulong(set), ck.CKA_SEED: seed, ck.CKA_VALUE: skb}, nil
}

func mlkemSetOf(k Key) (*mlkemSet, error) {
	set, _ := parameterSet(k)
	p, ok := mlkemSets[set]
	if !ok {
		return nil, errKeyBroken
	}
	return p, nil
}

// mlkemDecapsulator is a parsed ML-KEM private key.
type mlkemDecapsulator interface {
	Decapsulate(ct []byte) ([]byte, error)
}

type circlDecaps struct {
	s  kem.Scheme
	sk kem.PrivateKey
}

func (d circlDecaps) Decapsulate(ct []byte) ([]byte, error) { return d.s.Decapsulate(d.sk, ct) }

// mlkemPrivate parses an ML-KEM private key: from its seed when it has
// one (the dk, if there too, must be the seed's), else from dk.
func mlkemPrivate(k Key) (mlkemDecapsulator, error) {
	return memoKey(k, "mlkemPrivate", func(k Key) (mlkemDecapsulator, error) {
		p, err := mlkemSetOf(k)
		if err != nil {
			return nil, err
		}
		seed, _ := k.Attr(ck.CKA_SEED)
		val, _ := k.Attr(ck.CKA_VALUE)
		if len(seed) == 0 {
			sk, err := p.circl.UnmarshalBinaryPrivateKey(val)
			if err != nil {
				return nil, errKeyBroken
			}
			return circlDecaps{p.circl, sk}, nil
		}
		if len(seed) != mlkemSeedLen {
			return nil, errKeyBroken
		}
		_, sk := p.circl.DeriveKeyPair(seed)
		if len(val) > 0 {
			skb, _ := sk.MarshalBinary()
			if !bytes.Equal(skb, val) {
				return nil, errKeyBroken
			}
		}
		switch p.std {
		case 768:
			return mlkem.NewDecapsulationKey768(seed)
		case 1024:
			return mlkem.NewDecapsulationKey1024(seed)
		}
		return circlDecaps{p.circl, sk}, nil
	})
}

// mlkemEncapsulator is a parsed ML-KEM public key.
type mlkemEncapsulator interface {
	Encapsulate() (secret, ct []byte)
}

type circlEncaps struct {
	s  kem.Scheme
	pk kem.PublicKey
}

func (e circlEncaps) Encapsulate() ([]byte, []byte) {
	ct, ss, err := e.s.Encapsulate(e.pk)
	if err != nil {
		panic("mech: internal error: ML-KEM encapsulation failed: " + err.Error())
	}
	return ss, ct
}

// mlkemPublic parses an ML-KEM public key object's CKA_VALUE (ek),
// checked as FIPS 203 §7.2 asks.
func mlkemPublic(k Key) (mlkemEncapsulator, error) {
	return memoKey(k, "mlkemPublic", func(k Key) (mlkemEncapsulator, error) {
		p, err := mlkemSetOf(k)
		if err != nil {
			return nil, err
		}
		return mlkemParseEK(p, value(k))
	})
}

// mlkemParseEK parses an encapsulation key of the set p, checked as FIPS
// 203 §7.2 asks: a public key object's value, or the ek inside a dk.
func mlkemParseEK(p *mlkemSet, ek []byte) (mlkemEncapsulator, error) {
	switch {
	case p.std == 768:
		e, err := mlkem.NewEncapsulationKey768(ek)
		if err != nil {
			return nil, errKeyBroken
		}
		return e, nil
	case p.std == 1024:
		e, err := mlkem.NewEncapsulationKey1024(ek)
		if err != nil {
			return nil, errKeyBroken
		}
		return e, nil
	}
	if err := mlkemCheckEK(p, ek); err != nil {
		return nil, err
	}
	pk, err := p.circl.UnmarshalBinaryPublicKey(ek)
	if err != nil {
		return nil, errKeyBroken
	}
	return circlEncaps{p.circl, pk}, nil
}

// mlkemCheckEK is FIPS 203 §7.2's modulus check of an encapsulation key
// for the sets crypto/mlkem lacks: decoding and re-encoding the
// polynomial vector gives ek back only when every coefficient is below q.
// circl reduces on decoding, so the round trip through its key is the
// check.
func mlkemCheckEK(p *mlkemSet, ek []byte) error {
	if len(ek) != p.circl.PublicKeySize() {
		return errKeyBroken
	}
	pk, err := p.circl.UnmarshalBinaryPublicKey(ek)
	if err != nil {
		return errKeyBroken
	}
	back, _ := pk.MarshalBinary()
	if !bytes.Equal(back, ek) {
		return errKeyBroken
	}
	return nil
}

func mlkemCiphertextLen(k Key) (int, error) {
	if err := pqcPublic(k, ck.CKK_ML_KEM); err != nil {
		return 0, err
	}
	p, err := mlkemSetOf(k)
	if err != nil {
		return 0, err
	}
	return p.circl.CiphertextSize(), nil
}

func mlkemEncapsulate(k Key, m *wire.Mechanism) ([]byte, []byte, error) {
	if m.Present {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if err := pqcPublic(k, ck.CKK_ML_KEM); err != nil {
		return nil, nil, err
	}
	e, err := mlkemPublic(k)
	if err != nil {
		return nil, nil, err
	}
	secret, ct := e.Encapsulate()
	return ct, secret, nil
}

func mlkemDecapsulate(k Key, m *wire.Mechanism, ct []byte) ([]byte, error) {
	if m.Present {
		return nil, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if err := pqcPrivate(k, ck.CKK_ML_KEM); err != nil {
		return nil, err
	}
	p, err := mlkemSetOf(k)
	if err != nil {
		return nil, err
	}
	// FIPS 203 §7.3's input check: a ciphertext of the wrong length
	// (C_DecapsulateKey's CKR_WRAPPED_KEY_LEN_RANGE). Any ciphertext of
	// the right length decapsulates: ML-KEM rejects implicitly.
	if len(ct) != p.circl.CiphertextSize() {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_LEN_RANGE)
	}
	d, err := mlkemPrivate(k)
	if err != nil {
		return nil, err
	}
	secret, err := d.Decapsulate(ct)
	if err != nil {
		return nil, ck.Error(ck.CKR_WRAPPED_KEY_INVALID)
	}
	return secret, nil
}

// mlkemPCTSeed is the encapsulation randomness m of the
// pairwise-consistency test: fixed, so a key is refused or taken the
// same way every time.
var mlkemPCTSeed = bytes.Repeat([]byte{0x5a}, 32)

// mlkemDKConsistent says whether a decapsulation key given without its
// seed is one key: its dk_PKE (ŝ, 384·k bytes) encoded as FIPS 203's
// ByteEncode12 encodes it, every coefficient below q (circl reduces on
// decoding, so the round trip through its key is the check, as for an
// ek), and the secret of one encapsulation to the ek inside it the
// secret it decapsulates (a pairwise-consistency test). Neither circl's
// hash check nor the ek's modulus check reads dk_PKE: one of another key
// was taken, and decapsulated every ciphertext made to its ek to the
// implicit rejection's key, silently. A wrong ŝ turns v − ŝᵀu into noise
// over all 256 message bits, so one encapsulation finds it; z, which
// only the implicit rejection uses, any 32 bytes are right.
func mlkemDKConsistent(p *mlkemSet, dk []byte) bool {
	sk, err := p.circl.UnmarshalBinaryPrivateKey(dk)
	if err != nil {
		return false
	}
	back, err := sk.MarshalBinary()
	if err != nil || !bytes.Equal(back, dk) {
		return false
	}
	ct, ss, err := p.circl.EncapsulateDeterministically(sk.Public(), mlkemPCTSeed)
	if err != nil {
		return false
	}
	got, err := p.circl.Decapsulate(sk, ct)
	return err == nil && subtle.ConstantTimeCompare(got, ss) == 1
}
