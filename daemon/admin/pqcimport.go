package admin

import (
	"context"
	"encoding/pem"
	"strings"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// `key import` of post-quantum keys, which crypto/x509 does not read: a
// public key from a PEM or DER SubjectPublicKeyInfo, a private key from
// PKCS#8 in any of the profiles' forms (seed, expanded key, both), read
// by daemon/mech. A private key is stored with its public half, through
// C_CreateObject like every imported key, so the token's tier applies: on
// a premium token it is HSM-protected and never leaves again.

// parsePQCImport reads material as a post-quantum key; nil when it is not
// one (the other parsers then read it).
func parsePQCImport(material []byte, typ string) (*mech.PQCImport, error) {
	if typ != "" {
		return nil, nil
	}
	der, blockType := material, ""
	if b, _ := pem.Decode(material); b != nil {
		der, blockType = b.Bytes, b.Type
		defer clear(b.Bytes)
	}
	if blockType == "" || blockType == "PUBLIC KEY" {
		p, ok, err := mech.ParsePQCPublicKeyInfo(der)
		if ok {
			if err != nil {
				return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
			}
			return p, nil
		}
	}
	if blockType == "" || blockType == "PRIVATE KEY" {
		p, ok, err := mech.ParsePQCPrivateKey(der)
		if ok {
			if err != nil {
				return nil, adminapi.Errorf(adminapi.CodeBadRequest, "%v", err)
			}
			return p, nil
		}
	}
	return nil, nil
}

// importPQC stores a post-quantum key read by parsePQCImport: a public
// key alone, or a private key and its public half.
func (a *call) importPQC(ctx context.Context, ti keystore.TokenInfo, u *token.UserSession, opts adminapi.KeyOptions, p *mech.PQCImport) ([]adminapi.Key, error) {
	// An ML-KEM key encapsulates and decapsulates, nothing else.
	usage := []string{"sign", "verify"}
	if p.KeyType == ck.CKK_ML_KEM {
		usage = kemUsage
	}
	secret, public, err := keyTemplates(opts, usage, p.KeyType == ck.CKK_ML_KEM)
	if err != nil {
		return nil, err
	}
	if p.Private == nil {
		ph, err := u.CreateObject(ctx, withMaterial(public, ck.CKO_PUBLIC_KEY, p.KeyType, p.Public))
		if err != nil {
			return nil, err
		}
		return a.created(ctx, ti, u, ph)
	}
	vh, err := u.CreateObject(ctx, withMaterial(pairPrivate(secret), ck.CKO_PRIVATE_KEY, p.KeyType, p.Private))
	if err != nil {
		return nil, err
	}
	ph, err := u.CreateObject(ctx, withMaterial(public, ck.CKO_PUBLIC_KEY, p.KeyType, p.Public))
	if err != nil {
		u.DestroyObject(ctx, vh)
		return nil, err
	}
	return a.created(ctx, ti, u, vh, ph)
}

// pqcTypeHint says, for a file no parser read, the post-quantum form
// hsmemu reads in its place.
func pqcTypeHint(blockType string) string {
	if strings.Contains(blockType, "PRIVATE") {
		return "PKCS#8 with ML-KEM, ML-DSA or SLH-DSA's NIST OID"
	}
	return "a SubjectPublicKeyInfo with ML-KEM, ML-DSA or SLH-DSA's NIST OID"
}
