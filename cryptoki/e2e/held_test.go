package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"testing"

	"github.com/miekg/pkcs11"
)

// miekg/pkcs11 asks for every output's length with a NULL buffer first,
// as most applications do. The module asks the daemon for the whole
// result with that query and serves the follow-up call itself
// (docs/protocol.md, "Results ahead of the follow-up call"). These tests
// go through miekg/pkcs11: results are right, the operation state is what
// PKCS#11 says, and a query and its call cost the daemon one read.

// aesValueKey creates a token AES-256 key with a known value.
func aesValueKey(t *testing.T, p *pkcs11.Ctx, h pkcs11.SessionHandle, label string, value []byte, extractable bool) pkcs11.ObjectHandle {
	t.Helper()
	k, err := p.CreateObject(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
	})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestHeldResultsThroughMiekg(t *testing.T) {
	p, d := withModule(t)
	slot := newToken(t, p, "held")
	h := rwSession(t, p, slot, true)
	value := bytes.Repeat([]byte{7}, 32)
	mac := hmacKey(t, p, h, "mac", value)
	aesVal := bytes.Repeat([]byte{9}, 32)
	aesK := aesValueKey(t, p, h, "aes", aesVal, false)
	target := aesValueKey(t, p, h, "target", bytes.Repeat([]byte{3}, 32), true)
	iv := bytes.Repeat([]byte{1}, 16)
	cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(0x210B, nil)} // CKM_AES_KEY_WRAP_KWP
	sha := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256, nil)}
	data := []byte("sixteen byte msg and then some more")

	block, _ := aes.NewCipher(aesVal)
	padded := append(append([]byte(nil), data...), bytes.Repeat([]byte{byte(16 - len(data)%16)}, 16-len(data)%16)...)
	wantCT := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(wantCT, padded)
	wantDigest := sha256.Sum256(data)

	families := []struct {
		name string
		op   func() error
	}{
		{"sign", func() error {
			if err := p.SignInit(h, hmacMech, mac); err != nil {
				return err
			}
			got, err := p.Sign(h, data)
			if err == nil && !bytes.Equal(got, hmacOf(value, data)) {
				t.Fatalf("signature %x", got)
			}
			return err
		}},
		{"encrypt", func() error {
			if err := p.EncryptInit(h, cbc, aesK); err != nil {
				return err
			}
			got, err := p.Encrypt(h, data)
			if err == nil && !bytes.Equal(got, wantCT) {
				t.Fatalf("ciphertext %x, want %x", got, wantCT)
			}
			return err
		}},
		{"decrypt", func() error {
			if err := p.DecryptInit(h, cbc, aesK); err != nil {
				return err
			}
			got, err := p.Decrypt(h, wantCT)
			if err == nil && !bytes.Equal(got, data) {
				t.Fatalf("plaintext %q", got)
			}
			return err
		}},
		{"digest", func() error {
			if err := p.DigestInit(h, sha); err != nil {
				return err
			}
			got, err := p.Digest(h, data)
			if err == nil && !bytes.Equal(got, wantDigest[:]) {
				t.Fatalf("digest %x", got)
			}
			return err
		}},
		{"wrap", func() error {
			got, err := p.WrapKey(h, kwp, aesK, target)
			if err == nil && len(got) != 40 {
				t.Fatalf("wrapped %d bytes", len(got))
			}
			return err
		}},
	}
	for _, f := range families {
		// The first runs accept the Init; then each costs one read.
		for range 3 {
			if err := f.op(); err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
		}
		before := daemonReads(d)
		if before < 0 {
			continue
		}
		const n = 200
		for range n {
			if err := f.op(); err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
		}
		// One round trip, one read, an operation; two without the held
		// result. Some slack for a frame read in two.
		if reads := daemonReads(d) - before; reads > n*5/4 {
			t.Errorf("%s: the daemon read %d times for %d length queries and their calls, want about %d", f.name, reads, n, n)
		}
	}

	// The operation is over once the follow-up took the result.
	if err := p.SignInit(h, hmacMech, mac); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sign(h, data); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Sign(h, data); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Sign after the result was taken: %v, want CKR_OPERATION_NOT_INITIALIZED", err)
	}
	// An error ends the operation: a ciphertext that is not whole blocks.
	if err := p.DecryptInit(h, cbc, aesK); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Decrypt(h, wantCT[:5]); !is(err, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE) {
		t.Fatalf("Decrypt of 5 bytes: %v", err)
	}
	if _, err := p.Decrypt(h, wantCT); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("Decrypt after an error: %v, want CKR_OPERATION_NOT_INITIALIZED", err)
	}
	// Multi-part, the Final's length asked first, then a new operation.
	if err := p.DigestInit(h, sha); err != nil {
		t.Fatal(err)
	}
	if err := p.DigestUpdate(h, data[:10]); err != nil {
		t.Fatal(err)
	}
	if err := p.DigestUpdate(h, data[10:]); err != nil {
		t.Fatal(err)
	}
	if got, err := p.DigestFinal(h); err != nil || !bytes.Equal(got, wantDigest[:]) {
		t.Fatalf("DigestFinal: %x %v", got, err)
	}
	if _, err := p.DigestFinal(h); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("DigestFinal again: %v", err)
	}
	// A key made unusable between two wraps is refused at once.
	if err := p.DestroyObject(h, target); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WrapKey(h, kwp, aesK, target); !is(err, pkcs11.CKR_KEY_HANDLE_INVALID) {
		t.Fatalf("wrap of a destroyed key: %v", err)
	}
}
