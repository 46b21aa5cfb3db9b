package e2e

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech/mechtest"
)

// wpPQC is the part of a Wycheproof ML-DSA or ML-KEM file these tests
// read.
type wpPQC struct {
	NumberOfTests int `json:"numberOfTests"`
	TestGroups    []struct {
		PublicKey   string  `json:"publicKey"`
		PrivateKey  string  `json:"privateKey"`
		PrivateSeed *string `json:"privateSeed"`
		Tests       []struct {
			TcID   int     `json:"tcId"`
			Result string  `json:"result"`
			Msg    *string `json:"msg"`
			Ctx    string  `json:"ctx"`
			Sig    string  `json:"sig"`
			Rnd    *string `json:"rnd"`
			Seed   string  `json:"seed"`
			EK     string  `json:"ek"`
			DK     string  `json:"dk"`
			C      string  `json:"c"`
			K      string  `json:"K"`
		} `json:"tests"`
	} `json:"testGroups"`
}

func unhex(t *testing.T, s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pqcFiles are Wycheproof's ML-DSA and ML-KEM files, each with the
// parameter set its keys have.
var pqcFiles = func() map[string]uint {
	out := map[string]uint{}
	for size, set := range map[string]uint{"44": ck.CKP_ML_DSA_44, "65": ck.CKP_ML_DSA_65, "87": ck.CKP_ML_DSA_87} {
		for _, kind := range []string{"verify", "sign_seed", "sign_noseed"} {
			out["mldsa_"+size+"_"+kind+"_test.json"] = set
		}
	}
	for size, set := range map[string]uint{"512": ck.CKP_ML_KEM_512, "768": ck.CKP_ML_KEM_768, "1024": ck.CKP_ML_KEM_1024} {
		for _, kind := range []string{"", "encaps_", "keygen_seed_", "semi_expanded_decaps_"} {
			out["mlkem_"+size+"_"+kind+"test.json"] = set
		}
	}
	return out
}()

// TestPQCWycheproofThroughModule runs a sample of every Wycheproof ML-DSA
// and ML-KEM file through the C module: every fourth vector of each (all
// of a file of fewer than 20), each on a key made with C_CreateObject as
// the file gives it (public key, seed, or expanded private key). A key
// the token refuses must have only invalid vectors.
func TestPQCWycheproofThroughModule(t *testing.T) {
	p, f, slot := pqcModule(t)
	h := rwSession(t, p, slot, true)
	total := 0
	for name, set := range pqcFiles {
		var v wpPQC
		if err := json.Unmarshal(mechtest.WycheproofFile(t, name), &v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r := &wpRun{t: t, p: p, f: f, h: h, file: name, set: set}
		i := 0
		for _, g := range v.TestGroups {
			g := g
			for _, tc := range g.Tests {
				if i++; v.NumberOfTests >= 20 && i%4 != 0 {
					continue
				}
				r.ran++
				valid := tc.Result == "valid"
				switch {
				case strings.Contains(name, "_verify_"):
					r.verify(g.PublicKey, tc.TcID, valid, tc.Msg, tc.Ctx, tc.Sig)
				case strings.Contains(name, "_sign_"):
					r.sign(g.PrivateSeed, g.PrivateKey, tc.TcID, valid, tc.Msg, tc.Rnd, tc.Ctx, tc.Sig)
				case strings.Contains(name, "_encaps_"):
					r.encaps(tc.TcID, valid, tc.EK, tc.C)
				case strings.Contains(name, "_keygen_"):
					r.keygen(tc.TcID, tc.Seed, tc.DK)
				case strings.Contains(name, "_semi_expanded_"):
					r.decaps(tc.TcID, valid, pkcs11.NewAttribute(pkcs11.CKA_VALUE, unhex(t, tc.DK)), tc.C, tc.K)
				default:
					r.decaps(tc.TcID, valid, pkcs11.NewAttribute(ck.CKA_SEED, unhex(t, tc.Seed)), tc.C, tc.K)
				}
			}
		}
		if r.ran < 3 {
			t.Errorf("%s: ran %d vectors", name, r.ran)
		}
		total += r.ran
	}
	if len(pqcFiles) != 21 || total < 600 {
		t.Fatalf("%d files, %d vectors", len(pqcFiles), total)
	}
	t.Logf("%d Wycheproof vectors from %d files through the module", total, len(pqcFiles))
}

// wpRun runs one file's vectors.
type wpRun struct {
	t    *testing.T
	p    *pkcs11.Ctx
	f    *funcs32
	h    pkcs11.SessionHandle
	file string
	set  uint
	ran  int
}

func (r *wpRun) create(class, kt uint, attrs ...*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	return r.p.CreateObject(r.h, append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, kt),
		pkcs11.NewAttribute(ck.CKA_PARAMETER_SET, r.set),
	}, attrs...))
}

// done destroys a vector's key, so that a file's keys do not pile up in
// the session.
func (r *wpRun) done(o pkcs11.ObjectHandle) {
	if err := r.p.DestroyObject(r.h, o); err != nil {
		r.t.Fatalf("%s: destroy: %v", r.file, err)
	}
}

// refused reports a key the token would not create: right only when the
// vector is invalid, and then with CKR_ATTRIBUTE_VALUE_INVALID.
func (r *wpRun) refused(tc int, valid bool, err error) {
	if valid || rvOf(err) != ck.CKR_ATTRIBUTE_VALUE_INVALID {
		r.t.Errorf("%s tc %d: key refused: %v", r.file, tc, err)
	}
}

func (r *wpRun) verify(pubHex string, tc int, valid bool, msg *string, ctx, sig string) {
	pub, err := r.create(pkcs11.CKO_PUBLIC_KEY, ck.CKK_ML_DSA, pkcs11.NewAttribute(pkcs11.CKA_VALUE, unhex(r.t, pubHex)))
	if err != nil {
		r.refused(tc, valid, err)
		return
	}
	defer r.done(pub)
	var m []byte
	if msg != nil {
		m = unhex(r.t, *msg)
	}
	_, err = r.f.sig(callVerify, r.h, ck.CKM_ML_DSA, &sigCtx{ctx: unhex(r.t, ctx)}, pub, m, unhex(r.t, sig))
	if (err == nil) != valid {
		r.t.Errorf("%s tc %d: valid %v, got %v", r.file, tc, valid, err)
	}
}

// sign signs deterministically with a key made from the seed, or from
// the expanded key when the file has no seed. Vectors of FIPS 204's
// internal interface (no message) and randomised ones cannot be asked of
// PKCS#11: each still checks that its key is made, or refused.
func (r *wpRun) sign(seedHex *string, skHex string, tc int, valid bool, msg, rnd *string, ctx, sig string) {
	material := pkcs11.NewAttribute(pkcs11.CKA_VALUE, unhex(r.t, skHex))
	if seedHex != nil {
		material = pkcs11.NewAttribute(ck.CKA_SEED, unhex(r.t, *seedHex))
	}
	priv, err := r.create(pkcs11.CKO_PRIVATE_KEY, ck.CKK_ML_DSA, material, pkcs11.NewAttribute(pkcs11.CKA_SIGN, true))
	if err != nil {
		r.refused(tc, valid, err)
		return
	}
	defer r.done(priv)
	if msg == nil || rnd != nil {
		return
	}
	got, err := r.f.sig(callSign, r.h, ck.CKM_ML_DSA, &sigCtx{hedge: ck.CKH_DETERMINISTIC_REQUIRED, ctx: unhex(r.t, ctx)}, priv, unhex(r.t, *msg), make([]byte, 8192))
	switch {
	case valid && (err != nil || !bytes.Equal(got, unhex(r.t, sig))):
		r.t.Errorf("%s tc %d: signature differs: %v", r.file, tc, err)
	case !valid && err == nil:
		r.t.Errorf("%s tc %d: an invalid vector signed", r.file, tc)
	}
}

// encaps makes a public key of the file's ek (FIPS 203's modulus check
// refuses the invalid ones) and encapsulates to it. The file's secrets
// come from a chosen m, which PKCS#11 cannot give: only the ciphertext's
// length is checked.
func (r *wpRun) encaps(tc int, valid bool, ek, c string) {
	pub, err := r.create(pkcs11.CKO_PUBLIC_KEY, ck.CKK_ML_KEM, pkcs11.NewAttribute(pkcs11.CKA_VALUE, unhex(r.t, ek)))
	if err != nil {
		r.refused(tc, valid, err)
		return
	}
	defer r.done(pub)
	ct, _, k, err := r.f.encapsulate(r.h, pub, 4096)
	if err != nil || len(ct) != len(c)/2 || !valid {
		r.t.Errorf("%s tc %d: valid %v, ciphertext of %d bytes, %v", r.file, tc, valid, len(ct), err)
		return
	}
	r.done(k)
}

// keygen makes a private key from the seed: its CKA_VALUE is the file's dk.
func (r *wpRun) keygen(tc int, seed, dk string) {
	priv, err := r.create(pkcs11.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, pkcs11.NewAttribute(ck.CKA_SEED, unhex(r.t, seed)),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false))
	if err != nil {
		r.t.Errorf("%s tc %d: %v", r.file, tc, err)
		return
	}
	defer r.done(priv)
	if !bytes.Equal(attrOf(r.t, r.p, r.h, priv, pkcs11.CKA_VALUE), unhex(r.t, dk)) {
		r.t.Errorf("%s tc %d: dk differs", r.file, tc)
	}
}

// decaps decapsulates c with a private key made from material (seed or
// dk) to the file's secret K.
func (r *wpRun) decaps(tc int, valid bool, material *pkcs11.Attribute, c, k string) {
	priv, err := r.create(pkcs11.CKO_PRIVATE_KEY, ck.CKK_ML_KEM, material, pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false))
	if err != nil {
		r.refused(tc, valid, err)
		return
	}
	defer r.done(priv)
	key, err := r.f.decapsulate(r.h, priv, unhex(r.t, c))
	var got []byte
	if err == nil {
		got = attrOf(r.t, r.p, r.h, key, pkcs11.CKA_VALUE)
		r.done(key)
	}
	if ok := err == nil && bytes.Equal(got, unhex(r.t, k)); ok != valid {
		r.t.Errorf("%s tc %d: valid %v, got %x, %v", r.file, tc, valid, got, err)
	}
}
