package admin

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"strings"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// Certificates, as a cloud key vault keeps them: the private key in the
// token (HSM-protected on a premium token, then used and never exported),
// the certificate and its chain beside it as CKO_CERTIFICATE objects, the
// leaf's CKA_ID the key's, so that PKCS#11 clients (OpenSSL, crypto11,
// NSS) find the pair. A certificate request is signed inside the token.

// expirySoon is how far ahead `cert show` and `cert list` warn.
const expirySoon = 30 * 24 * time.Hour

// Certificate categories (CKA_CERTIFICATE_CATEGORY).
const (
	categoryLeaf      = 1 // token user
	categoryAuthority = 2
)

// parseCertMaterial reads a PKCS#12 file (opened with password) or PEM
// blocks: at most one private key, and certificates.
func parseCertMaterial(material, password []byte) (priv any, certs []*x509.Certificate, err error) {
	if !bytes.Contains(material, []byte("-----BEGIN ")) {
		key, leaf, cas, err := pkcs12.DecodeChain(material, string(password))
		switch {
		case errors.Is(err, pkcs12.ErrIncorrectPassword):
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the PKCS#12 password is wrong")
		case err != nil:
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "not a PKCS#12 file hsmemu reads, nor PEM: %v", err)
		}
		return key, append([]*x509.Certificate{leaf}, cas...), nil
	}
	rest := material
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "a certificate does not parse: %v", err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY":
			if priv != nil {
				return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the PEM holds more than one private key")
			}
			p, _, _, err := parseImport(pem.EncodeToMemory(b), "")
			clear(b.Bytes)
			if err != nil {
				return nil, nil, err
			}
			priv = p
		case "ENCRYPTED PRIVATE KEY":
			return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "the private key is encrypted: give a PKCS#12 file, or decrypt it (openssl pkey)")
		}
	}
	if len(certs) == 0 {
		return nil, nil, adminapi.Errorf(adminapi.CodeBadRequest, "no certificate in the PEM")
	}
	return priv, certs, nil
}

// orderChain puts the leaf first (the certificate of pub when given, else
// the one no other in the set is the issuer of), then its issuers as far
// as the set holds them, then whatever else came with it.
func orderChain(certs []*x509.Certificate, pub crypto.PublicKey) ([]*x509.Certificate, error) {
	leaf := -1
	for i, c := range certs {
		if pub != nil {
			if samePublic(c.PublicKey, pub) {
				leaf = i
				break
			}
			continue
		}
		issues := false
		for j, o := range certs {
			if i != j && isIssuer(c, o) {
				issues = true
			}
		}
		if !issues {
			leaf = i
			break
		}
	}
	if leaf < 0 {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "no certificate in the file is the private key's")
	}
	out := []*x509.Certificate{certs[leaf]}
	used := map[int]bool{leaf: true}
	for cur := certs[leaf]; len(out) < len(certs); {
		next := -1
		for i, c := range certs {
			if !used[i] && isIssuer(c, cur) {
				next = i
				break
			}
		}
		if next < 0 {
			break
		}
		used[next], cur = true, certs[next]
		out = append(out, cur)
	}
	for i, c := range certs {
		if !used[i] {
			out = append(out, c)
		}
	}
	return out, nil
}

// isIssuer reports whether ca issued c (and c is not ca itself).
func isIssuer(ca, c *x509.Certificate) bool {
	return !bytes.Equal(ca.Raw, c.Raw) && bytes.Equal(c.RawIssuer, ca.RawSubject) && c.CheckSignatureFrom(ca) == nil
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// storedCert is a certificate object of the token, parsed.
type storedCert struct {
	found
	cert *x509.Certificate
}

// tokenCerts returns the token's certificate objects. The token is open.
func (a *call) tokenCerts(ctx context.Context, ti keystore.TokenInfo) ([]storedCert, error) {
	class := uint64(ck.CKO_CERTIFICATE)
	ids, err := a.store.Find(ctx, ti.UUID, keystore.Filter{Class: &class, IncludePrivate: true})
	if err != nil {
		return nil, err
	}
	var out []storedCert
	for _, id := range ids {
		stored, err := a.store.Open(ctx, id)
		if errors.Is(err, keystore.ErrNotFound) || errors.Is(err, keystore.ErrTampered) {
			continue // deleted meanwhile; or unusable, and recorded
		}
		if err != nil {
			return nil, err
		}
		o, err := token.View(stored)
		if errors.Is(err, keystore.ErrTampered) {
			continue
		}
		if err != nil {
			return nil, err
		}
		der, _ := o.Attr(ck.CKA_VALUE)
		c, err := x509.ParseCertificate(der)
		if err != nil {
			continue // a certificate object an application stored that is not X.509 DER
		}
		out = append(out, storedCert{found: found{id: id, uuid: stored.UUID, obj: o}, cert: c})
	}
	return out, nil
}

// keyFor returns the token's private key whose public key is pub.
func (a *call) keyFor(ctx context.Context, ti keystore.TokenInfo, pub crypto.PublicKey) (*found, error) {
	keys, err := a.liveKeys(ctx, ti, adminapi.KeySelector{})
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		if k.obj.Class() != ck.CKO_PRIVATE_KEY {
			continue
		}
		if p, err := publicKeyOf(k.obj); err == nil && samePublic(p, pub) {
			return &keys[i], nil
		}
	}
	return nil, nil
}

// certTemplate is a certificate object's template.
func certTemplate(c *x509.Certificate, label string, id []byte, category uint64) []keystore.Attribute {
	serial, _ := asn1.Marshal(c.SerialNumber)
	return []keystore.Attribute{
		{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_CERTIFICATE)},
		{Type: ck.CKA_CERTIFICATE_TYPE, Value: keystore.Ulong(ck.CKC_X_509)},
		{Type: ck.CKA_TOKEN, Value: keystore.Bool(true)},
		{Type: ck.CKA_PRIVATE, Value: keystore.Bool(false)},
		{Type: ck.CKA_LABEL, Value: []byte(label)},
		{Type: ck.CKA_ID, Value: id},
		{Type: ck.CKA_SUBJECT, Value: c.RawSubject},
		{Type: ck.CKA_ISSUER, Value: c.RawIssuer},
		{Type: ck.CKA_SERIAL_NUMBER, Value: serial},
		{Type: ck.CKA_VALUE, Value: c.Raw},
		{Type: ck.CKA_CERTIFICATE_CATEGORY, Value: keystore.Ulong(category)},
		{Type: ck.CKA_START_DATE, Value: ckDate(c.NotBefore)},
		{Type: ck.CKA_END_DATE, Value: ckDate(c.NotAfter)},
	}
}

// ckDate is a time as a CK_DATE, YYYYMMDD: empty (no date) for one a CK_DATE
// cannot hold, before 1900 or after 9999, which the token refuses.
func ckDate(t time.Time) []byte {
	t = t.UTC()
	if t.Year() < 1900 || t.Year() > 9999 {
		return []byte{}
	}
	return []byte(t.Format("20060102"))
}

// nameOf is a certificate's label when none is given: its subject's
// common name, else the whole subject.
func nameOf(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	return c.Subject.String()
}

// authorityID is a CA certificate's CKA_ID: its subject key identifier,
// else the SHA-1 of its public key, as the identifier is usually made.
func authorityID(c *x509.Certificate) []byte {
	if len(c.SubjectKeyId) > 0 {
		return c.SubjectKeyId
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		Key       asn1.BitString
	}
	asn1.Unmarshal(c.RawSubjectPublicKeyInfo, &spki)
	sum := sha1.Sum(spki.Key.Bytes)
	return sum[:]
}

func (a *call) certImport(ctx context.Context, args adminapi.CertImport) (*adminapi.CertImported, error) {
	priv, certs, err := parseCertMaterial(args.Material, args.Password)
	if err != nil {
		return nil, err
	}
	var pub crypto.PublicKey
	if priv != nil {
		pub = priv.(crypto.Signer).Public()
	}
	if certs, err = orderChain(certs, pub); err != nil {
		return nil, err
	}
	leaf := certs[0]
	out := &adminapi.CertImported{Certs: []adminapi.Cert{}}
	err = a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, u *token.UserSession) error {
		have, err := a.tokenCerts(ctx, ti)
		if err != nil {
			return err
		}
		held := func(c *x509.Certificate) *storedCert {
			for i := range have {
				if bytes.Equal(have[i].cert.Raw, c.Raw) {
					return &have[i]
				}
			}
			return nil
		}
		if h := held(leaf); h != nil {
			return adminapi.Errorf(adminapi.CodeExists, "the token holds this certificate already (%s)", h.uuid)
		}
		key, err := a.keyFor(ctx, ti, leaf.PublicKey)
		if err != nil {
			return err
		}
		label := args.Label
		switch {
		case priv != nil && key != nil:
			return adminapi.Errorf(adminapi.CodeExists, "the token holds this private key already (%s): import the certificates alone, as PEM, to attach them", key.uuid)
		case priv != nil:
			if label == "" {
				label = nameOf(leaf)
			}
			opts := adminapi.KeyOptions{Label: label, Protection: args.Protection, AllowDuplicateLabel: args.AllowDuplicateLabel}
			if err := a.labelFree(ctx, ti, opts); err != nil {
				return err
			}
			keys, vh, err := a.storePair(ctx, ti, u, opts, priv, pub)
			if err != nil {
				return err
			}
			out.Keys = keys
			stored, err := u.Stored(ctx, vh)
			if err != nil {
				return err
			}
			v, err := token.View(stored)
			if err != nil {
				return err
			}
			key = &found{id: stored.ID, uuid: stored.UUID, obj: v}
		case key == nil:
			return adminapi.Errorf(adminapi.CodeNotFound, "no private key in token %q has this certificate's public key: import the key with it (PKCS#12, or PEM with the key), or request the certificate with `hsmemu cert request`", ti.Label)
		}
		keyID, _ := key.obj.Attr(ck.CKA_ID)
		if label == "" {
			l, _ := key.obj.Attr(ck.CKA_LABEL)
			label = string(l)
		}
		store := func(c *x509.Certificate, label string, id []byte, category uint64) error {
			h, err := u.CreateObject(ctx, certTemplate(c, label, id, category))
			if err != nil {
				return err
			}
			stored, err := u.Stored(ctx, h)
			if err != nil {
				return err
			}
			v, err := token.View(stored)
			if err != nil {
				return err
			}
			out.Certs = append(out.Certs, describeCert(storedCert{found: found{id: stored.ID, uuid: stored.UUID, obj: v}, cert: c}, []found{*key}, false))
			return nil
		}
		if err := store(leaf, label, keyID, categoryLeaf); err != nil {
			return err
		}
		for _, c := range certs[1:] {
			if h := held(c); h != nil {
				out.Certs = append(out.Certs, describeCert(*h, nil, false))
				continue
			}
			if err := store(c, nameOf(c), authorityID(c), categoryAuthority); err != nil {
				return err
			}
		}
		sum := sha256.Sum256(leaf.Raw)
		a.eng.Audit(ctx, a.who, ti.UUID, "cert.import", map[string]string{"subject": leaf.Subject.String(), "sha256": hex.EncodeToString(sum[:]),
			"key": key.uuid.String(), "chain": fmt.Sprint(len(certs) - 1), "with_key": fmt.Sprint(priv != nil)})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// describeCert is the admin's view of a certificate object; keys are the
// token's private keys, among which its own is found.
func describeCert(sc storedCert, keys []found, full bool) adminapi.Cert {
	c := sc.cert
	s256, s1 := sha256.Sum256(c.Raw), sha1.Sum(c.Raw)
	out := adminapi.Cert{
		UUID: sc.uuid.String(), Category: "unspecified",
		Subject: c.Subject.String(), Issuer: c.Issuer.String(), Serial: hex.EncodeToString(c.SerialNumber.Bytes()),
		NotBefore: c.NotBefore.UTC(), NotAfter: c.NotAfter.UTC(),
		SHA256: hex.EncodeToString(s256[:]), SHA1: hex.EncodeToString(s1[:]),
	}
	if l, ok := sc.obj.Attr(ck.CKA_LABEL); ok {
		out.Label = string(l)
	}
	if id, ok := sc.obj.Attr(ck.CKA_ID); ok {
		out.ID = hex.EncodeToString(id)
	}
	switch ulongOf(attrValue(sc.obj, ck.CKA_CERTIFICATE_CATEGORY)) {
	case categoryLeaf:
		out.Category = "leaf"
	case categoryAuthority:
		out.Category = "authority"
	}
	out.SANs = sanStrings(c)
	now := time.Now()
	out.Expired = now.After(c.NotAfter)
	out.ExpiresSoon = !out.Expired && c.NotAfter.Sub(now) < expirySoon
	for _, k := range keys {
		if k.obj.Class() != ck.CKO_PRIVATE_KEY {
			continue
		}
		if p, err := publicKeyOf(k.obj); err == nil && samePublic(p, c.PublicKey) {
			out.Key = k.uuid.String()
			if l, ok := k.obj.Attr(ck.CKA_LABEL); ok {
				out.KeyLabel = string(l)
			}
		}
	}
	if full {
		out.PEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	return out
}

func sanStrings(c *x509.Certificate) []string {
	var out []string
	for _, d := range c.DNSNames {
		out = append(out, "DNS:"+d)
	}
	for _, ip := range c.IPAddresses {
		out = append(out, "IP:"+ip.String())
	}
	for _, e := range c.EmailAddresses {
		out = append(out, "EMAIL:"+e)
	}
	for _, u := range c.URIs {
		out = append(out, "URI:"+u.String())
	}
	return out
}

// certsAndKeys opens the token's certificates and private keys.
func (a *call) certsAndKeys(ctx context.Context, ti keystore.TokenInfo) ([]storedCert, []found, error) {
	certs, err := a.tokenCerts(ctx, ti)
	if err != nil {
		return nil, nil, err
	}
	keys, err := a.liveKeys(ctx, ti, adminapi.KeySelector{})
	return certs, keys, err
}

func (a *call) certList(ctx context.Context, args adminapi.CertList) ([]adminapi.Cert, error) {
	out := []adminapi.Cert{}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		certs, keys, err := a.certsAndKeys(ctx, ti)
		for _, c := range certs {
			out = append(out, describeCert(c, keys, false))
		}
		return err
	})
	return out, err
}

// oneCert is the certificate sel names.
func oneCert(certs []storedCert, sel adminapi.CertSelector) (*storedCert, error) {
	if sel == (adminapi.CertSelector{}) {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "name the certificate with --cert LABEL, --uuid UUID or --id HEX")
	}
	var match []int
	for i, c := range certs {
		l, _ := c.obj.Attr(ck.CKA_LABEL)
		id, _ := c.obj.Attr(ck.CKA_ID)
		if sel.Cert != "" && string(l) != sel.Cert || sel.UUID != "" && c.uuid.String() != sel.UUID || sel.ID != "" && hex.EncodeToString(id) != sel.ID {
			continue
		}
		match = append(match, i)
	}
	switch len(match) {
	case 0:
		return nil, adminapi.Errorf(adminapi.CodeNotFound, "no certificate matches (`hsmemu cert list` lists them)")
	case 1:
		return &certs[match[0]], nil
	}
	return nil, adminapi.Errorf(adminapi.CodeAmbiguous, "%d certificates match: name one with --uuid (`hsmemu cert list` shows them)", len(match))
}

func (a *call) certShow(ctx context.Context, args adminapi.CertRef) (*adminapi.Cert, error) {
	var out *adminapi.Cert
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		certs, keys, err := a.certsAndKeys(ctx, ti)
		if err != nil {
			return err
		}
		c, err := oneCert(certs, args.CertSelector)
		if err != nil {
			return err
		}
		d := describeCert(*c, keys, true)
		out = &d
		return nil
	})
	return out, err
}

// certExport is a certificate and its chain, as far as the token holds
// it: never a key.
func (a *call) certExport(ctx context.Context, args adminapi.CertRef) (*adminapi.CertExport, error) {
	out := &adminapi.CertExport{}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		certs, keys, err := a.certsAndKeys(ctx, ti)
		if err != nil {
			return err
		}
		c, err := oneCert(certs, args.CertSelector)
		if err != nil {
			return err
		}
		var b strings.Builder
		for cur := c; cur != nil && len(out.Certs) < 16; {
			out.Certs = append(out.Certs, describeCert(*cur, keys, false))
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: cur.cert.Raw})
			var next *storedCert
			for i := range certs {
				if isIssuer(certs[i].cert, cur.cert) {
					next = &certs[i]
					break
				}
			}
			cur = next
		}
		out.PEM = b.String()
		return nil
	})
	return out, err
}

// certRequest makes a PKCS#10 request for a key of the token, signed in
// the token: the private key is used where it is, as C_Sign uses it.
func (a *call) certRequest(ctx context.Context, args adminapi.CertRequest) (*adminapi.CSR, error) {
	subject, err := parseSubject(args.Subject)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.CertificateRequest{Subject: subject}
	if err := addSANs(tmpl, args.SANs); err != nil {
		return nil, err
	}
	var out *adminapi.CSR
	err = a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, u *token.UserSession) error {
		sel, err := a.liveKey(ctx, ti, args.KeySelector)
		if err != nil {
			return err
		}
		var key *found
		for i := range sel {
			if sel[i].obj.Class() == ck.CKO_PRIVATE_KEY {
				key = &sel[i]
			}
		}
		if key == nil {
			return adminapi.Errorf(adminapi.CodeBadRequest, "%s is not a private key: a certificate request is signed by one", args.KeySelector.String())
		}
		pub, err := publicKeyOf(key.obj)
		if err != nil {
			return err
		}
		signer := &tokenSigner{ctx: ctx, u: u, key: u.Handle(ti.UUID, key.id), pub: pub}
		der, err := x509.CreateCertificateRequest(nil, tmpl, signer)
		if signer.err != nil {
			return signer.err // the token's refusal, with its CK_RV
		}
		if err != nil {
			return adminapi.Errorf(adminapi.CodeBadRequest, "the request cannot be made: %v", err)
		}
		out = &adminapi.CSR{PEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), Subject: subject.String(), Key: describe(ti, *key, false)}
		a.eng.Audit(ctx, a.who, ti.UUID, "cert.request", map[string]string{"subject": subject.String(), "key": key.uuid.String(),
			"sans": strings.Join(args.SANs, ",")})
		return nil
	})
	return out, err
}

// tokenSigner is a crypto.Signer whose private key is a token object:
// x509 hands it the digest (the message, for Ed25519) and the token signs.
type tokenSigner struct {
	ctx context.Context
	u   *token.UserSession
	key uint64
	pub crypto.PublicKey
	err error // the token's error, kept whole for the admin's answer
}

func (s *tokenSigner) Public() crypto.PublicKey { return s.pub }

// digestInfo are the DER prefixes of PKCS #1 v1.5's DigestInfo.
var digestInfo = map[crypto.Hash][]byte{
	crypto.SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	crypto.SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	crypto.SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

func (s *tokenSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	var m uint64
	data := digest
	switch s.pub.(type) {
	case *ecdsa.PublicKey:
		m = ck.CKM_ECDSA
	case *rsa.PublicKey:
		if _, pss := opts.(*rsa.PSSOptions); pss {
			return nil, errors.New("RSA-PSS requests are not made")
		}
		prefix, ok := digestInfo[opts.HashFunc()]
		if !ok {
			return nil, fmt.Errorf("hash %v", opts.HashFunc())
		}
		m, data = ck.CKM_RSA_PKCS, append(append([]byte{}, prefix...), digest...)
	case ed25519.PublicKey:
		m = ck.CKM_EDDSA
	default:
		return nil, fmt.Errorf("a %T key", s.pub)
	}
	sig, err := s.u.Sign(s.ctx, &wire.Mechanism{Type: m}, s.key, data)
	if err != nil {
		s.err = err
		return nil, err
	}
	if m == ck.CKM_ECDSA {
		// PKCS#11 gives r‖s; X.509 wants the ASN.1 sequence.
		n := len(sig) / 2
		return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
	}
	return sig, nil
}

// subjectAttrs are the attribute names a subject may use.
var subjectAttrs = map[string]func(n *pkix.Name, v string){
	"CN":           func(n *pkix.Name, v string) { n.CommonName = v },
	"O":            func(n *pkix.Name, v string) { n.Organization = append(n.Organization, v) },
	"OU":           func(n *pkix.Name, v string) { n.OrganizationalUnit = append(n.OrganizationalUnit, v) },
	"C":            func(n *pkix.Name, v string) { n.Country = append(n.Country, v) },
	"L":            func(n *pkix.Name, v string) { n.Locality = append(n.Locality, v) },
	"ST":           func(n *pkix.Name, v string) { n.Province = append(n.Province, v) },
	"STREET":       func(n *pkix.Name, v string) { n.StreetAddress = append(n.StreetAddress, v) },
	"POSTALCODE":   func(n *pkix.Name, v string) { n.PostalCode = append(n.PostalCode, v) },
	"SERIALNUMBER": func(n *pkix.Name, v string) { n.SerialNumber = v },
}

// parseSubject reads "CN=www.example.com,O=Example,C=US" (a comma in a
// value escaped as \,) or OpenSSL's "/CN=www.example.com/O=Example".
func parseSubject(s string) (pkix.Name, error) {
	var n pkix.Name
	sep := ','
	if strings.HasPrefix(s, "/") {
		sep, s = '/', s[1:]
	}
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case rune(s[i]) == sep:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	parts = append(parts, cur.String())
	for _, p := range parts {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		set := subjectAttrs[strings.ToUpper(strings.TrimSpace(k))]
		if !ok || set == nil || strings.TrimSpace(v) == "" {
			return n, adminapi.Errorf(adminapi.CodeBadRequest, "--subject: %q is not NAME=VALUE with NAME one of CN, O, OU, C, L, ST, STREET, POSTALCODE, SERIALNUMBER", p)
		}
		set(&n, strings.TrimSpace(v))
	}
	return n, nil
}

// addSANs adds "DNS:name", "IP:addr", "EMAIL:addr" and "URI:uri" to a
// request.
func addSANs(r *x509.CertificateRequest, sans []string) error {
	for _, s := range sans {
		kind, v, _ := strings.Cut(s, ":")
		switch strings.ToUpper(kind) {
		case "DNS":
			r.DNSNames = append(r.DNSNames, v)
		case "IP":
			ip := net.ParseIP(v)
			if ip == nil {
				return adminapi.Errorf(adminapi.CodeBadRequest, "--san %q: not an IP address", s)
			}
			r.IPAddresses = append(r.IPAddresses, ip)
		case "EMAIL":
			r.EmailAddresses = append(r.EmailAddresses, v)
		case "URI":
			u, err := url.Parse(v)
			if err != nil || u.Scheme == "" {
				return adminapi.Errorf(adminapi.CodeBadRequest, "--san %q: not a URI", s)
			}
			r.URIs = append(r.URIs, u)
		default:
			return adminapi.Errorf(adminapi.CodeBadRequest, "--san %q: want DNS:name, IP:address, EMAIL:address or URI:uri", s)
		}
		if v == "" {
			return adminapi.Errorf(adminapi.CodeBadRequest, "--san %q is empty", s)
		}
	}
	return nil
}
