package admin

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"maps"
	"slices"
	"strings"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// The administrator's key generation and import go through the same
// engine calls an application makes (C_GenerateKey, C_GenerateKeyPair,
// C_CreateObject), in the administrator's own session, so every attribute
// rule, the token's tier and the audit log apply as they would to a
// client.

// keySpec is what a key type names: its mechanism, and its size or curve.
type keySpec struct {
	mech    uint64
	keyType uint64
	bits    int    // AES, generic secret, RSA
	params  []byte // EC, Edwards: CKA_EC_PARAMS
	set     uint64 // ML-KEM, ML-DSA, SLH-DSA: CKA_PARAMETER_SET
	usage   []string
}

// keyTypes are the types `key generate` makes.
var keyTypes = map[string]keySpec{
	"aes-128":     {mech: ck.CKM_AES_KEY_GEN, keyType: ck.CKK_AES, bits: 128, usage: []string{"encrypt", "decrypt", "wrap", "unwrap"}},
	"aes-192":     {mech: ck.CKM_AES_KEY_GEN, keyType: ck.CKK_AES, bits: 192, usage: []string{"encrypt", "decrypt", "wrap", "unwrap"}},
	"aes-256":     {mech: ck.CKM_AES_KEY_GEN, keyType: ck.CKK_AES, bits: 256, usage: []string{"encrypt", "decrypt", "wrap", "unwrap"}},
	"generic-256": {mech: ck.CKM_GENERIC_SECRET_KEY_GEN, keyType: ck.CKK_GENERIC_SECRET, bits: 256, usage: []string{"sign", "verify", "derive"}},
	"rsa-2048":    {mech: ck.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: ck.CKK_RSA, bits: 2048, usage: []string{"sign", "verify"}},
	"rsa-3072":    {mech: ck.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: ck.CKK_RSA, bits: 3072, usage: []string{"sign", "verify"}},
	"rsa-4096":    {mech: ck.CKM_RSA_PKCS_KEY_PAIR_GEN, keyType: ck.CKK_RSA, bits: 4096, usage: []string{"sign", "verify"}},
	"ec-p256":     {mech: ck.CKM_EC_KEY_PAIR_GEN, keyType: ck.CKK_EC, params: mech.ECParams("P-256"), usage: []string{"sign", "verify"}},
	"ec-p384":     {mech: ck.CKM_EC_KEY_PAIR_GEN, keyType: ck.CKK_EC, params: mech.ECParams("P-384"), usage: []string{"sign", "verify"}},
	"ec-p521":     {mech: ck.CKM_EC_KEY_PAIR_GEN, keyType: ck.CKK_EC, params: mech.ECParams("P-521"), usage: []string{"sign", "verify"}},
	"ed25519":     {mech: ck.CKM_EC_EDWARDS_KEY_PAIR_GEN, keyType: ck.CKK_EC_EDWARDS, params: mech.ECParams("Ed25519"), usage: []string{"sign", "verify"}},

	// The post-quantum keys (PKCS#11 3.2). An ML-KEM pair encapsulates
	// and decapsulates (CKA_ENCAPSULATE, CKA_DECAPSULATE), nothing else.
	"ml-kem-512":  {mech: ck.CKM_ML_KEM_KEY_PAIR_GEN, keyType: ck.CKK_ML_KEM, set: ck.CKP_ML_KEM_512, usage: kemUsage},
	"ml-kem-768":  {mech: ck.CKM_ML_KEM_KEY_PAIR_GEN, keyType: ck.CKK_ML_KEM, set: ck.CKP_ML_KEM_768, usage: kemUsage},
	"ml-kem-1024": {mech: ck.CKM_ML_KEM_KEY_PAIR_GEN, keyType: ck.CKK_ML_KEM, set: ck.CKP_ML_KEM_1024, usage: kemUsage},
	"ml-dsa-44":   {mech: ck.CKM_ML_DSA_KEY_PAIR_GEN, keyType: ck.CKK_ML_DSA, set: ck.CKP_ML_DSA_44, usage: []string{"sign", "verify"}},
	"ml-dsa-65":   {mech: ck.CKM_ML_DSA_KEY_PAIR_GEN, keyType: ck.CKK_ML_DSA, set: ck.CKP_ML_DSA_65, usage: []string{"sign", "verify"}},
	"ml-dsa-87":   {mech: ck.CKM_ML_DSA_KEY_PAIR_GEN, keyType: ck.CKK_ML_DSA, set: ck.CKP_ML_DSA_87, usage: []string{"sign", "verify"}},
}

// The twelve SLH-DSA sets: slh-dsa-sha2-128s to slh-dsa-shake-256f.
func init() {
	for set := uint64(ck.CKP_SLH_DSA_SHA2_128S); set <= ck.CKP_SLH_DSA_SHAKE_256F; set++ {
		name := strings.ToLower(mech.PQCSetName(ck.CKK_SLH_DSA, set))
		keyTypes[name] = keySpec{mech: ck.CKM_SLH_DSA_KEY_PAIR_GEN, keyType: ck.CKK_SLH_DSA, set: set, usage: []string{"sign", "verify"}}
	}
}

// KeyTypeNames lists the types `key generate` takes.
func KeyTypeNames() []string {
	var out []string
	for k := range keyTypes {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// kemUsage is what an ML-KEM pair does by default: all it can.
var kemUsage = []string{"encapsulate", "decapsulate"}

// usageFlags maps a usage name to its attribute, which half of a pair
// carries it, and whether it is a KEM's (PKCS#11 3.2, C_EncapsulateKey
// and C_DecapsulateKey): an ML-KEM key has those usages and only those,
// any other key none of them.
var usageFlags = map[string]struct {
	t   uint64
	pub bool // a public key has it; the rest belong to private keys
	kem bool
}{
	"encrypt":     {t: ck.CKA_ENCRYPT, pub: true},
	"decrypt":     {t: ck.CKA_DECRYPT},
	"sign":        {t: ck.CKA_SIGN},
	"verify":      {t: ck.CKA_VERIFY, pub: true},
	"wrap":        {t: ck.CKA_WRAP, pub: true},
	"unwrap":      {t: ck.CKA_UNWRAP},
	"derive":      {t: ck.CKA_DERIVE},
	"encapsulate": {t: ck.CKA_ENCAPSULATE, pub: true, kem: true},
	"decapsulate": {t: ck.CKA_DECAPSULATE, kem: true},
}

// keyTemplates builds the templates of a new key from the admin's
// options: the secret key's (or the private half's) and the public half's.
// kem says the key is an ML-KEM key.
func keyTemplates(opts adminapi.KeyOptions, usage []string, kem bool) (secret, public []keystore.Attribute, err error) {
	if len(opts.Usage) > 0 {
		usage = opts.Usage
	}
	id := []byte(nil)
	if opts.ID != "" {
		if id, err = hex.DecodeString(opts.ID); err != nil {
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "--id takes hex: %v", err)
		}
	} else {
		// A pair's halves share a CKA_ID, which is how clients (OpenSSL,
		// OpenSSH, pkcs11-tool) match them: make one.
		id = make([]byte, 8)
		rand.Read(id)
	}
	common := []keystore.Attribute{
		{Type: ck.CKA_TOKEN, Value: keystore.Bool(true)},
		{Type: ck.CKA_LABEL, Value: []byte(opts.Label)},
		{Type: ck.CKA_ID, Value: id},
	}
	secret = append(slices.Clone(common), keystore.Attribute{Type: ck.CKA_PRIVATE, Value: keystore.Bool(true)})
	public = append(slices.Clone(common), keystore.Attribute{Type: ck.CKA_PRIVATE, Value: keystore.Bool(false)})
	for _, u := range usage {
		f, ok := usageFlags[u]
		switch {
		case !ok:
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "unknown usage %q: want encrypt, decrypt, sign, verify, wrap, unwrap, derive, encapsulate or decapsulate", u)
		case kem && !f.kem:
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "an ML-KEM key does not %s: its usages are encapsulate and decapsulate", u)
		case !kem && f.kem:
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "only an ML-KEM key may %s", u)
		}
	}
	// Every usage flag is set, true or false, so that what the key may do
	// is what was asked, not the token's defaults; a KEM's only on an
	// ML-KEM key, the only kind that has them.
	for _, name := range slices.Sorted(maps.Keys(usageFlags)) {
		f := usageFlags[name]
		if f.kem && !kem {
			continue
		}
		v := keystore.Bool(false)
		if slices.Contains(usage, name) {
			v = keystore.Bool(true)
		}
		secret = append(secret, keystore.Attribute{Type: f.t, Value: v})
		if f.pub {
			public = append(public, keystore.Attribute{Type: f.t, Value: v})
		}
	}
	switch opts.Protection {
	case "":
	case "hsm":
		secret = append(secret, keystore.Attribute{Type: ck.CKA_HSMEMU_PROTECTION, Value: keystore.Ulong(ck.CKP_HSMEMU_HSM)})
	case "software":
		secret = append(secret, keystore.Attribute{Type: ck.CKA_HSMEMU_PROTECTION, Value: keystore.Ulong(ck.CKP_HSMEMU_SOFTWARE)})
	default:
		return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "unknown protection %q: want hsm or software", opts.Protection)
	}
	if opts.Extractable {
		secret = append(secret, keystore.Attribute{Type: ck.CKA_EXTRACTABLE, Value: keystore.Bool(true)})
	} else {
		secret = append(secret, keystore.Attribute{Type: ck.CKA_EXTRACTABLE, Value: keystore.Bool(false)})
	}
	return secret, public, nil
}

// pairPrivate reduces a secret-key template to a private key's: a private
// key has no encrypt, verify, wrap or encapsulate.
func pairPrivate(t []keystore.Attribute) []keystore.Attribute {
	return slices.DeleteFunc(slices.Clone(t), func(a keystore.Attribute) bool {
		return a.Type == ck.CKA_ENCRYPT || a.Type == ck.CKA_VERIFY || a.Type == ck.CKA_WRAP || a.Type == ck.CKA_ENCAPSULATE
	})
}

// created describes the objects behind new handles.
func (a *call) created(ctx context.Context, ti keystore.TokenInfo, u *token.UserSession, handles ...uint64) ([]adminapi.Key, error) {
	var out []adminapi.Key
	for _, h := range handles {
		stored, err := u.Stored(ctx, h)
		if err != nil {
			return nil, err
		}
		o, err := token.View(stored)
		if err != nil {
			return nil, err
		}
		out = append(out, describe(ti, found{id: stored.ID, uuid: stored.UUID, obj: o}, false))
	}
	return out, nil
}

func (a *call) keyGenerate(ctx context.Context, args adminapi.KeyGenerate) ([]adminapi.Key, error) {
	spec, ok := keyTypes[strings.ToLower(args.Type)]
	if !ok {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "unknown key type %q: want one of %s", args.Type, strings.Join(KeyTypeNames(), ", "))
	}
	if args.Label == "" {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "a new key needs a label")
	}
	secret, public, err := keyTemplates(args.KeyOptions, spec.usage, spec.keyType == ck.CKK_ML_KEM)
	if err != nil {
		return nil, err
	}
	var out []adminapi.Key
	err = a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, u *token.UserSession) error {
		if err := a.labelFree(ctx, ti, args.KeyOptions); err != nil {
			return err
		}
		m := &wire.Mechanism{Type: spec.mech}
		switch spec.keyType {
		case ck.CKK_AES, ck.CKK_GENERIC_SECRET:
			secret = append(secret, keystore.Attribute{Type: ck.CKA_VALUE_LEN, Value: keystore.Ulong(uint64(spec.bits / 8))})
			kh, err := u.GenerateKey(ctx, m, secret)
			if err != nil {
				return err
			}
			out, err = a.created(ctx, ti, u, kh)
			return err
		case ck.CKK_RSA:
			public = append(public, keystore.Attribute{Type: ck.CKA_MODULUS_BITS, Value: keystore.Ulong(uint64(spec.bits))},
				keystore.Attribute{Type: ck.CKA_PUBLIC_EXPONENT, Value: []byte{1, 0, 1}})
		case ck.CKK_ML_KEM, ck.CKK_ML_DSA, ck.CKK_SLH_DSA:
			public = append(public, keystore.Attribute{Type: ck.CKA_PARAMETER_SET, Value: keystore.Ulong(spec.set)})
		default:
			public = append(public, keystore.Attribute{Type: ck.CKA_EC_PARAMS, Value: spec.params})
		}
		ph, vh, err := u.GenerateKeyPair(ctx, m, public, pairPrivate(secret))
		if err != nil {
			return err
		}
		out, err = a.created(ctx, ti, u, vh, ph)
		return err
	})
	return out, err
}

// parseImport reads key material: a PEM block (PKCS#8, PKCS#1, SEC1, or a
// public key), DER PKCS#8, or, with type aes or generic, raw bytes.
func parseImport(material []byte, typ string) (priv, pub any, raw []byte, err error) {
	switch strings.ToLower(typ) {
	case "aes", "generic":
		return nil, nil, material, nil
	case "":
	default:
		return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "--type for raw material is aes or generic, not %q (PEM and PKCS#8 say their own type)", typ)
	}
	der := material
	blockType := "PRIVATE KEY"
	if b, _ := pem.Decode(material); b != nil {
		der, blockType = b.Bytes, b.Type
		defer clear(b.Bytes)
	}
	switch blockType {
	case "PRIVATE KEY":
		priv, err = x509.ParsePKCS8PrivateKey(der)
	case "RSA PRIVATE KEY":
		priv, err = x509.ParsePKCS1PrivateKey(der)
	case "EC PRIVATE KEY":
		priv, err = x509.ParseECPrivateKey(der)
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(der)
		if err != nil {
			return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the public key does not parse: %v (hsmemu reads RSA, EC, Ed25519, or %s)", err, pqcTypeHint(blockType))
		}
		return nil, pub, nil, nil
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(der)
		if err != nil {
			return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the public key does not parse: %v", err)
		}
		return nil, pub, nil, nil
	default:
		return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "a PEM block of type %q is not a key hsmemu imports", blockType)
	}
	if err != nil {
		// Never echo the parser's view of secret material beyond its kind.
		return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the private key does not parse as %s (give PEM, PKCS#8 DER, or raw bytes with --type aes; post-quantum keys as %s)", blockType, pqcTypeHint(blockType))
	}
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		pub = &k.PublicKey
	case *ecdsa.PrivateKey:
		pub = &k.PublicKey
	case ed25519.PrivateKey:
		pub = k.Public()
	default:
		return nil, nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "a %T key is not one hsmemu holds (RSA, EC P-256/384/521, Ed25519)", priv)
	}
	return priv, pub, nil, nil
}

// publicKeyAttrs turns a public key into a public key object's attributes.
func publicKeyAttrs(pub any) (map[uint64][]byte, uint64, error) {
	m, kt, err := mech.PublicKeyAttrs(pub)
	switch {
	case errors.Is(err, ck.Error(ck.CKR_CURVE_NOT_SUPPORTED)):
		return nil, 0, adminapi.Errorf(adminapi.CodeBadRequest, "the curve is not one hsmemu supports (P-256, P-384, P-521)")
	case err != nil:
		return nil, 0, adminapi.Errorf(adminapi.CodeBadRequest, "a %T public key is not one hsmemu holds", pub)
	}
	return m, kt, nil
}

// withMaterial adds the class, key type and material to a template.
func withMaterial(t []keystore.Attribute, class, kt uint64, m map[uint64][]byte) []keystore.Attribute {
	t = append(t, keystore.Attribute{Type: ck.CKA_CLASS, Value: keystore.Ulong(class)}, keystore.Attribute{Type: ck.CKA_KEY_TYPE, Value: keystore.Ulong(kt)})
	for _, typ := range slices.Sorted(maps.Keys(m)) {
		t = append(t, keystore.Attribute{Type: typ, Value: m[typ]})
	}
	return t
}

func (a *call) keyImport(ctx context.Context, args adminapi.KeyImport) ([]adminapi.Key, error) {
	if args.Label == "" {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "an imported key needs a label")
	}
	pq, err := parsePQCImport(args.Material, args.Type)
	if err != nil {
		return nil, err
	}
	var priv, pub any
	var raw []byte
	if pq == nil {
		if priv, pub, raw, err = parseImport(args.Material, args.Type); err != nil {
			return nil, err
		}
	} else {
		defer pq.Wipe()
	}
	var out []adminapi.Key
	err = a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, u *token.UserSession) error {
		if err := a.labelFree(ctx, ti, args.KeyOptions); err != nil {
			return err
		}
		switch {
		case pq != nil:
			out, err = a.importPQC(ctx, ti, u, args.KeyOptions, pq)
			return err
		case raw != nil:
			kt, usage := uint64(ck.CKK_AES), keyTypes["aes-256"].usage
			if strings.EqualFold(args.Type, "generic") {
				kt, usage = ck.CKK_GENERIC_SECRET, keyTypes["generic-256"].usage
			} else if n := len(raw); n != 16 && n != 24 && n != 32 {
				return adminapi.Errorf(adminapi.CodeBadRequest, "a raw AES key is 16, 24 or 32 bytes, not %d", n)
			}
			secret, _, err := keyTemplates(args.KeyOptions, usage, false)
			if err != nil {
				return err
			}
			kh, err := u.CreateObject(ctx, withMaterial(secret, ck.CKO_SECRET_KEY, kt, map[uint64][]byte{ck.CKA_VALUE: raw}))
			if err != nil {
				return err
			}
			out, err = a.created(ctx, ti, u, kh)
			return err
		case priv == nil:
			pm, kt, err := publicKeyAttrs(pub)
			if err != nil {
				return err
			}
			_, public, err := keyTemplates(args.KeyOptions, []string{"verify"}, false)
			if err != nil {
				return err
			}
			ph, err := u.CreateObject(ctx, withMaterial(public, ck.CKO_PUBLIC_KEY, kt, pm))
			if err != nil {
				return err
			}
			out, err = a.created(ctx, ti, u, ph)
			return err
		}
		out, _, err = a.storePair(ctx, ti, u, args.KeyOptions, priv, pub)
		return err
	})
	return out, err
}

// storePair stores a private key and its public half, as `key import`
// does (cert import too): through C_CreateObject, so the token's tier and
// the protection asked for apply. It returns them, and the private key's
// handle and CKA_ID.
func (a *call) storePair(ctx context.Context, ti keystore.TokenInfo, u *token.UserSession, opts adminapi.KeyOptions, priv, pub any) ([]adminapi.Key, uint64, error) {
	vm, kt, err := mech.PrivateKeyAttrs(priv)
	if err != nil {
		return nil, 0, adminapi.Errorf(adminapi.CodeBadRequest, "the private key cannot be held (RSA with two primes, EC P-256/384/521, Ed25519)")
	}
	defer func() {
		for _, v := range vm {
			clear(v)
		}
	}()
	pm, _, err := publicKeyAttrs(pub)
	if err != nil {
		return nil, 0, err
	}
	secret, public, err := keyTemplates(opts, []string{"sign", "verify"}, false)
	if err != nil {
		return nil, 0, err
	}
	vh, err := u.CreateObject(ctx, withMaterial(pairPrivate(secret), ck.CKO_PRIVATE_KEY, kt, vm))
	if err != nil {
		return nil, 0, err
	}
	ph, err := u.CreateObject(ctx, withMaterial(public, ck.CKO_PUBLIC_KEY, kt, pm))
	if err != nil {
		u.DestroyObject(ctx, vh)
		return nil, 0, err
	}
	out, err := a.created(ctx, ti, u, vh, ph)
	return out, vh, err
}
