package escrow

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
)

func TestDomainIDVector(t *testing.T) {
	t.Parallel()
	// printf hsmemu/domain/v1 | openssl dgst -sha256 -mac HMAC -macopt hexkey:<secret>
	secret := []byte("hsmemu escrow test vector secret")
	want := "cfce70ff885a189dcc597a5f9fb3f47cbca5c44deff915e7422719ab500b190f"
	if got := hex.EncodeToString(DomainID(secret)); got != want {
		t.Errorf("DomainID = %s, want %s", got, want)
	}
}

func TestSplitDecryptCombine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		pairs func(t *testing.T) []keyPair
	}{
		{name: "rsa-x25519-p256", pairs: func(t *testing.T) []keyPair {
			return []keyPair{rsaPair(t, "alice"), ecdhPair(t, "bob", ecdh.X25519()), ecdhPair(t, "carol", ecdh.P256())}
		}},
		{name: "p384-p521-ecdsa", pairs: func(t *testing.T) []keyPair {
			return []keyPair{ecdhPair(t, "dave", ecdh.P384()), ecdhPair(t, "erin", ecdh.P521()), ecdsaPair(t, "frank")}
		}},
		{name: "opaque-keys", pairs: func(t *testing.T) []keyPair {
			r, x, p := rsaPair(t, "rsa token"), ecdhPair(t, "x25519 token", ecdh.X25519()), ecdhPair(t, "p256 token", ecdh.P256())
			x.priv = opaqueECDH{KeyExchanger: x.priv.(ecdh.KeyExchanger)}
			p.priv = opaqueECDH{KeyExchanger: p.priv.(ecdh.KeyExchanger)}
			r.priv = opaqueRSA{Decrypter: r.priv.(*rsa.PrivateKey)}
			return []keyPair{r, x, p}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pairs := tt.pairs(t)
			secret := testSecret(t)
			files, meta, err := Split(secret, 2, custodians(pairs), nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(files) != 3 || meta.Threshold != 2 || meta.Version != 1 || !bytes.Equal(meta.DomainID, DomainID(secret)) {
				t.Fatalf("Split returned %d files and metadata %+v", len(files), meta)
			}
			shares := make([]*Share, len(files))
			for i, f := range files {
				c := pairs[i].custodian
				if f.Custodian != c.Name || f.Fingerprint != c.Fingerprint() || f.Index != byte(i+1) {
					t.Errorf("share %d: got %s %s %d", i, f.Custodian, f.Fingerprint, f.Index)
				}
				if meta.Custodians[i] != (CustodianInfo{Name: c.Name, Fingerprint: c.Fingerprint(), Index: byte(i + 1)}) {
					t.Errorf("metadata custodian %d: %+v", i, meta.Custodians[i])
				}
				if bytes.Contains(f.File, secret) || bytes.Contains(f.File, []byte(hex.EncodeToString(secret))) {
					t.Fatalf("share file %d contains the secret", i)
				}
				s, err := DecryptShare(f.File, pairs[i].priv)
				if err != nil {
					t.Fatalf("DecryptShare(%s): %v", c.Name, err)
				}
				if s.Index != byte(i+1) || s.Threshold != 2 || !bytes.Equal(s.DomainID, meta.DomainID) {
					t.Errorf("share %d decrypted to %v", i, s)
				}
				shares[i] = s
			}
			for _, subset := range [][]int{{0, 1}, {0, 2}, {1, 2}, {2, 0}, {0, 1, 2}} {
				var sub []*Share
				for _, i := range subset {
					sub = append(sub, shares[i])
				}
				got, err := Combine(sub)
				if err != nil {
					t.Fatalf("Combine%v: %v", subset, err)
				}
				if !bytes.Equal(got, secret) {
					t.Errorf("Combine%v recreated the wrong secret", subset)
				}
			}
			if _, err := Combine(shares[:1]); !errors.Is(err, ErrNotEnoughShares) {
				t.Errorf("Combine of one share: %v, want ErrNotEnoughShares", err)
			}
		})
	}
}

// split23 splits a fresh secret 2-of-3 among an RSA, an X25519 and a P-256
// custodian.
func split23(t *testing.T) ([]keyPair, []EncryptedShare, []byte) {
	t.Helper()
	pairs := []keyPair{rsaPair(t, "alice"), ecdhPair(t, "bob", ecdh.X25519()), ecdhPair(t, "carol", ecdh.P256())}
	secret := testSecret(t)
	files, _, err := Split(secret, 2, custodians(pairs), nil)
	if err != nil {
		t.Fatal(err)
	}
	return pairs, files, secret
}

func TestDecryptShareWrongKey(t *testing.T) {
	t.Parallel()
	_, files, _ := split23(t)
	// Wrong keys of each type. The generated RSA key is the one Split used
	// (there is one per test binary), so the wrong RSA key is the fixture's.
	others := []crypto.PrivateKey{
		fixtureKey(t, "rsa2048"),
		ecdhPair(t, "x", ecdh.X25519()).priv,
		ecdhPair(t, "p", ecdh.P256()).priv,
	}
	for i := range files {
		for j, o := range others {
			t.Run(fmt.Sprintf("share%d-key%d", i+1, j), func(t *testing.T) {
				t.Parallel()
				_, err := DecryptShare(files[i].File, o)
				if !errors.Is(err, ErrIncorrectKey) {
					t.Errorf("err = %v, want ErrIncorrectKey", err)
				}
			})
		}
		// Claiming the wrong key's fingerprint gets past the cheap check,
		// and must then fail to decrypt.
		t.Run(fmt.Sprintf("share%d-forged-fingerprint", i+1), func(t *testing.T) {
			t.Parallel()
			o := others[i]
			forged := editHeader(t, files[i].File, hdrFingerprint, fingerprint(publicOf(t, o)))
			if s, err := DecryptShare(forged, o); err == nil || errors.Is(err, ErrIncorrectKey) {
				t.Errorf("DecryptShare = %v, %v; want a decryption failure", s, err)
			}
		})
	}
}

func publicOf(t testing.TB, priv crypto.PrivateKey) crypto.PublicKey {
	t.Helper()
	pub, _, err := opener(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestDecryptShareTampered(t *testing.T) {
	t.Parallel()
	pairs, files, _ := split23(t)
	for i, f := range files {
		other := fmt.Sprintf("%064x", 1)
		block, _ := pem.Decode(f.File)
		domain := block.Headers[hdrDomain]
		tests := []struct {
			name string
			file []byte
			want error // nil: any error
		}{
			{name: "domain", file: editHeader(t, f.File, hdrDomain, other), want: nil},
			{name: "index", file: editHeader(t, f.File, hdrIndex, "7"), want: nil},
			{name: "threshold", file: editHeader(t, f.File, hdrThreshold, "1"), want: nil},
			{name: "custodian", file: editHeader(t, f.File, hdrCustodian, "mallory"), want: nil},
			{name: "version", file: editHeader(t, f.File, hdrVersion, "2"), want: nil},
			{name: "algorithm", file: editHeader(t, f.File, hdrAlgorithm, algP384), want: ErrIncorrectKey},
			{name: "extra header", file: editHeader(t, f.File, "Comment", "hello"), want: nil},
			{name: "missing header", file: editHeader(t, f.File, hdrIndex, ""), want: nil},
			{name: "non-canonical index", file: editHeader(t, f.File, hdrIndex, "0"+strconv.Itoa(int(f.Index))), want: nil},
			{name: "upper-case domain", file: editHeader(t, f.File, hdrDomain, strings.ToUpper(domain)), want: nil},
			{name: "fingerprint of nobody", file: editHeader(t, f.File, hdrFingerprint, "SHA256:"+strings.Repeat("A", 43)), want: ErrIncorrectKey},
			{name: "flip first byte", file: editBody(t, f.File, func(b []byte) []byte { b[0] ^= 1; return b }), want: nil},
			{name: "flip middle byte", file: editBody(t, f.File, func(b []byte) []byte { b[len(b)/2] ^= 0x80; return b }), want: nil},
			{name: "flip last byte", file: editBody(t, f.File, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), want: nil},
			{name: "truncated", file: editBody(t, f.File, func(b []byte) []byte { return b[:len(b)-1] }), want: nil},
			{name: "extended", file: editBody(t, f.File, func(b []byte) []byte { return append(b, 0) }), want: nil},
			{name: "empty body", file: editBody(t, f.File, func(b []byte) []byte { return nil }), want: nil},
			{name: "leading text", file: append([]byte("note\n"), f.File...), want: nil},
			{name: "second block", file: append(bytes.Clone(f.File), f.File...), want: nil},
			{name: "rewrapped", file: bytes.Replace(f.File, []byte("\n\n"), []byte("\n\n\n"), 1), want: nil},
			{name: "other block type", file: bytes.ReplaceAll(f.File, []byte(shareBlockType), []byte("PUBLIC KEY")), want: nil},
			{name: "empty", file: nil, want: nil},
			{name: "huge", file: bytes.Repeat([]byte{'A'}, maxShareFile+1), want: nil},
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("share%d/%s", i+1, tt.name), func(t *testing.T) {
				t.Parallel()
				if bytes.Equal(tt.file, f.File) {
					t.Fatal("test case did not change the file")
				}
				s, err := DecryptShare(tt.file, pairs[i].priv)
				if err == nil {
					t.Fatalf("DecryptShare succeeded: %v", s)
				}
				t.Log(err)
				if tt.want != nil && !errors.Is(err, tt.want) {
					t.Errorf("err = %v, want %v", err, tt.want)
				}
			})
		}
	}
}

func TestDecryptShareTolerated(t *testing.T) {
	t.Parallel()
	pairs, files, _ := split23(t)
	f := files[1].File
	tests := []struct {
		name string
		file []byte
	}{
		{name: "crlf", file: bytes.ReplaceAll(f, []byte("\n"), []byte("\r\n"))},
		{name: "surrounding white space", file: append(append([]byte("\n  \n"), f...), "\n\n"...)},
		{name: "no final newline", file: bytes.TrimSuffix(f, []byte("\n"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := DecryptShare(tt.file, pairs[1].priv); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestCombineMismatch(t *testing.T) {
	t.Parallel()
	pairs, filesA, secretA := split23(t)
	secretB := testSecret(t)
	filesB, _, err := Split(secretB, 2, custodians(pairs), nil)
	if err != nil {
		t.Fatal(err)
	}
	open := func(files []EncryptedShare, i int) *Share {
		s, err := DecryptShare(files[i].File, pairs[i].priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a0, a1, a2 := open(filesA, 0), open(filesA, 1), open(filesA, 2)
	b1 := open(filesB, 1)
	corrupt := func(s *Share) *Share {
		c := *s
		c.Value = bytes.Clone(s.Value)
		c.Value[5] ^= 0x40
		return &c
	}
	retag := func(s *Share, f func(*Share)) *Share {
		c := *s
		f(&c)
		return &c
	}
	tests := []struct {
		name   string
		shares []*Share
		want   error
	}{
		{name: "other domain", shares: []*Share{a0, b1}, want: ErrShareMismatch},
		{name: "corrupted value", shares: []*Share{a0, corrupt(a1)}, want: ErrShareMismatch},
		{name: "one corrupted of three", shares: []*Share{a0, a1, corrupt(a2)}, want: ErrShareMismatch},
		{name: "duplicate", shares: []*Share{a0, a0}, want: ErrShareMismatch},
		{name: "threshold differs", shares: []*Share{a0, retag(a1, func(s *Share) { s.Threshold = 3 })}, want: ErrShareMismatch},
		{name: "domain relabelled", shares: []*Share{a0, retag(b1, func(s *Share) { s.DomainID = a0.DomainID })}, want: ErrShareMismatch},
		{name: "index relabelled", shares: []*Share{a0, retag(a1, func(s *Share) { s.Index = 3 })}, want: ErrShareMismatch},
		{name: "none", shares: nil, want: ErrNotEnoughShares},
		{name: "one", shares: []*Share{a2}, want: ErrNotEnoughShares},
		{name: "nil share", shares: []*Share{a0, nil}, want: nil},
		{name: "short value", shares: []*Share{a0, retag(a1, func(s *Share) { s.Value = s.Value[:31] })}, want: nil},
		{name: "short domain", shares: []*Share{a0, retag(a1, func(s *Share) { s.DomainID = s.DomainID[:31] })}, want: nil},
		{name: "index zero", shares: []*Share{a0, retag(a1, func(s *Share) { s.Index = 0 })}, want: nil},
		{name: "threshold zero", shares: []*Share{retag(a0, func(s *Share) { s.Threshold = 0 })}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Combine(tt.shares)
			if err == nil {
				t.Fatal("Combine succeeded")
			}
			t.Log(err)
			if got != nil {
				t.Error("Combine returned a secret with an error")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), hex.EncodeToString(secretA)) || strings.Contains(err.Error(), hex.EncodeToString(a0.Value)) {
				t.Errorf("error message leaks a secret: %v", err)
			}
		})
	}
	// The checks above must not have modified the shares.
	if got, err := Combine([]*Share{a2, a0}); err != nil || !bytes.Equal(got, secretA) {
		t.Errorf("Combine after the failures: %v", err)
	}
}

func TestSplitErrors(t *testing.T) {
	t.Parallel()
	x := ecdhPair(t, "x", ecdh.X25519()).custodian
	y := ecdhPair(t, "y", ecdh.P256()).custodian
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	small := Custodian{Name: "small", Key: mustParsePKIX(t, readTestdata(t, "rsa1024.pub"))}
	many := make([]Custodian, 256)
	for i := range many {
		many[i] = Custodian{Name: fmt.Sprint("c", i), Key: x.Key}
	}
	secret := testSecret(t)
	tests := []struct {
		name       string
		secret     []byte
		threshold  int
		custodians []Custodian
		rnd        io.Reader
	}{
		{name: "short secret", secret: secret[:31], threshold: 1, custodians: []Custodian{x}, rnd: nil},
		{name: "long secret", secret: append(bytes.Clone(secret), 0), threshold: 1, custodians: []Custodian{x}, rnd: nil},
		{name: "threshold zero", secret: secret, threshold: 0, custodians: []Custodian{x, y}, rnd: nil},
		{name: "threshold above n", secret: secret, threshold: 3, custodians: []Custodian{x, y}, rnd: nil},
		{name: "no custodians", secret: secret, threshold: 1, custodians: nil, rnd: nil},
		{name: "256 custodians", secret: secret, threshold: 2, custodians: many, rnd: nil},
		{name: "duplicate name", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: x.Name, Key: y.Key}}, rnd: nil},
		{name: "duplicate key", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: "other", Key: x.Key}}, rnd: nil},
		{name: "ed25519", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: "ed", Key: edPub}}, rnd: nil},
		{name: "rsa-1024", secret: secret, threshold: 1, custodians: []Custodian{x, small}, rnd: nil},
		{name: "nil key", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: "nil", Key: nil}}, rnd: nil},
		{name: "empty name", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: "", Key: y.Key}}, rnd: nil},
		{name: "newline in name", secret: secret, threshold: 1, custodians: []Custodian{x, {Name: "a\nb", Key: y.Key}}, rnd: nil},
		{name: "short randomness", secret: secret, threshold: 2, custodians: []Custodian{x, y}, rnd: bytes.NewReader(make([]byte, 8))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files, _, err := Split(tt.secret, tt.threshold, tt.custodians, tt.rnd)
			if err == nil {
				t.Fatalf("Split succeeded with %d files", len(files))
			}
			if strings.Contains(err.Error(), hex.EncodeToString(secret)) {
				t.Errorf("error leaks the secret: %v", err)
			}
		})
	}
}

func TestShareRedacted(t *testing.T) {
	t.Parallel()
	s := &Share{DomainID: make([]byte, 32), Threshold: 2, Index: 1, Value: bytes.Repeat([]byte{0xab}, 32)}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%v", *s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s),
		fmt.Sprintf("%+v", struct{ S Share }{S: *s}),
	} {
		if strings.Contains(out, "abab") || strings.Contains(out, "171") {
			t.Errorf("share printed its value: %s", out)
		}
	}
	if _, err := json.Marshal(s); err == nil {
		t.Error("json.Marshal of a share succeeded")
	}
	s.Wipe()
	if !bytes.Equal(s.Value, make([]byte, 32)) {
		t.Error("Wipe left the value")
	}
	(*Share)(nil).Wipe()
}
