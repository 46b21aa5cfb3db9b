package e2e

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"testing"

	"github.com/miekg/pkcs11"

	"hsmemu/cryptoki/ck"
)

// An Update's length query is one round trip with its follow-up: the
// daemon runs the update at the query and the module holds its output
// (docs/protocol.md, "Results ahead of the follow-up call"). These tests
// go through the module and the daemon, feed streams in every way a
// follow-up may come (the same input, other input, a short buffer first,
// another call in between, one call) and compare them with the standard
// library's output over the inputs the follow-ups brought.

// updateWays are the ways a part goes in: query is the input of the
// length query before the call (nil: none), short asks with a buffer of
// one byte first, between makes another call on the session first.
var updateWays = []struct {
	name    string
	decoy   bool // the length query brings other input than the call
	query   bool
	short   bool
	between bool
}{
	{name: "length query, same input", query: true},
	{name: "length query, other input", query: true, decoy: true},
	{name: "length query, short buffer", query: true, short: true},
	{name: "length query, another call, same input", query: true, between: true},
	{name: "one call"},
	{name: "length query, other input, short buffer", query: true, decoy: true, short: true},
}

// feedParts runs an Update for each part, the ways in turn, and returns
// the output the follow-ups gave.
func feedParts(t *testing.T, p *pkcs11.Ctx, l *msgFuncs, h pkcs11.SessionHandle, decrypt bool, parts [][]byte) []byte {
	t.Helper()
	var got []byte
	for i, part := range parts {
		w := updateWays[i%len(updateWays)]
		if w.query {
			in := part
			if w.decoy {
				in = append(bytes.Repeat([]byte{0x5a}, 16), part...)
			}
			if _, _, err := l.CryptUpdate(decrypt, h, in, output{null: true}); err != nil {
				t.Fatalf("part %d, %s: length query: %v", i, w.name, err)
			}
		}
		if w.between {
			if _, err := p.GetSessionInfo(h); err != nil {
				t.Fatal(err)
			}
		}
		if w.short {
			out, n, err := l.CryptUpdate(decrypt, h, part, want(1))
			switch {
			case err == nil && n <= 1:
				// It fitted: the part is in.
				got = append(got, out...)
				continue
			case !is(err, pkcs11.CKR_BUFFER_TOO_SMALL):
				t.Fatalf("part %d, %s: short buffer: %v (length %d)", i, w.name, err, n)
			}
		}
		out, _, err := l.CryptUpdate(decrypt, h, part, want(len(part)+64))
		if err != nil {
			t.Fatalf("part %d, %s: %v", i, w.name, err)
		}
		got = append(got, out...)
	}
	return got
}

func TestHeldUpdates(t *testing.T) {
	p, d := withModule(t)
	l, err := messageFuncs(need(t).module)
	if err != nil {
		t.Fatal(err)
	}
	slot := newToken(t, p, "heldupd")
	h := rwSession(t, p, slot, true)
	value := bytes.Repeat([]byte{9}, 32)
	key := aesValueKey(t, p, h, "aes", value, false)
	block, _ := aes.NewCipher(value)
	iv := bytes.Repeat([]byte{1}, 16)

	// Parts of odd sizes, so that partial blocks are kept across updates,
	// two rounds of every way, and the empty part.
	var parts [][]byte
	var all []byte
	for i := range 2*len(updateWays) + 1 {
		n := (i * 7) % 37
		part := bytes.Repeat([]byte{byte('a' + i)}, n)
		parts = append(parts, part)
		all = append(all, part...)
	}

	pad := 16 - len(all)%16
	padded := append(bytes.Clone(all), bytes.Repeat([]byte{byte(pad)}, pad)...)
	cbcOut := make([]byte, len(padded))
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(cbcOut, padded)
	cb := [16]byte{15: 0xfd}
	ctrOut := make([]byte, len(all))
	cipher.NewCTR(block, cb[:]).XORKeyStream(ctrOut, all)
	ctrParam := append(binary.LittleEndian.AppendUint64(nil, 32), cb[:]...)
	gcm, _ := cipher.NewGCM(block)
	gcmParams := pkcs11.NewGCMParams(iv[:12], nil, 128)
	defer gcmParams.Free()
	gcmOut := gcm.Seal(nil, iv[:12], all, nil)

	mechs := []struct {
		name string
		m    *pkcs11.Mechanism
		want []byte
	}{
		{"cbc-pad", pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv), cbcOut},
		{"ctr", pkcs11.NewMechanism(pkcs11.CKM_AES_CTR, ctrParam), ctrOut},
		{"gcm", pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcmParams), gcmOut},
	}
	for _, m := range mechs {
		if err := p.EncryptInit(h, []*pkcs11.Mechanism{m.m}, key); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		got := feedParts(t, p, l, h, false, parts)
		last, err := p.EncryptFinal(h)
		if err != nil {
			t.Fatalf("%s: final: %v", m.name, err)
		}
		if got = append(got, last...); !bytes.Equal(got, m.want) {
			t.Errorf("%s: %x, want %x", m.name, got, m.want)
		}
		// And back: the ciphertext in the same parts' sizes.
		var cparts [][]byte
		rest := m.want
		for _, part := range parts {
			n := min(len(part), len(rest))
			cparts = append(cparts, rest[:n])
			rest = rest[n:]
		}
		cparts = append(cparts, rest)
		if err := p.DecryptInit(h, []*pkcs11.Mechanism{m.m}, key); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		plain := feedParts(t, p, l, h, true, cparts)
		last, err = p.DecryptFinal(h)
		if err != nil {
			t.Fatalf("%s: decrypt final: %v", m.name, err)
		}
		if plain = append(plain, last...); !bytes.Equal(plain, all) {
			t.Errorf("%s, decrypted: %q, want %q", m.name, plain, all)
		}
	}

	cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC_PAD, iv)}
	// Parts that are all the same bytes, as miekg/pkcs11 sends them (the
	// length first): each is the next part, never the last one again.
	same := bytes.Repeat([]byte{'s'}, 40)
	want3 := make([]byte, 128)
	padded3 := append(bytes.Repeat(same, 3), bytes.Repeat([]byte{8}, 8)...)
	cipher.NewCBCEncrypter(block, iv).CryptBlocks(want3, padded3)
	if err := p.EncryptInit(h, cbc, key); err != nil {
		t.Fatal(err)
	}
	var got3 []byte
	for range 3 {
		out, err := p.EncryptUpdate(h, same)
		if err != nil {
			t.Fatal(err)
		}
		got3 = append(got3, out...)
	}
	last3, err := p.EncryptFinal(h)
	if got3 = append(got3, last3...); err != nil || !bytes.Equal(got3, want3) {
		t.Fatalf("three equal parts: %x %v, want %x", got3, err, want3)
	}
	// While an output is held the operation is active; C_SessionCancel
	// discards it, and the next operation starts afresh.
	if err := p.EncryptInit(h, cbc, key); err != nil {
		t.Fatal(err)
	}
	if _, n, err := l.CryptUpdate(false, h, all[:40], output{null: true}); err != nil || n != 32 {
		t.Fatalf("length query: %v, %d", err, n)
	}
	if err := p.EncryptInit(h, cbc, key); !is(err, pkcs11.CKR_OPERATION_ACTIVE) {
		t.Fatalf("EncryptInit while an output is held: %v, want CKR_OPERATION_ACTIVE", err)
	}
	if err := l.SessionCancel(h, ck.CKF_ENCRYPT); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.CryptUpdate(false, h, all[:40], want(64)); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("the follow-up after C_SessionCancel: %v, want CKR_OPERATION_NOT_INITIALIZED", err)
	}
	if err := p.EncryptInit(h, cbc, key); err != nil {
		t.Fatal(err)
	}
	got, err := p.Encrypt(h, all)
	if err != nil || !bytes.Equal(got, cbcOut) {
		t.Fatalf("after the cancel: %x %v, want %x", got, err, cbcOut)
	}
	// An Update the daemon refuses ends the operation: CBC without padding
	// takes any input in parts, but its Final wants whole blocks.
	if err := p.EncryptInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, iv)}, key); err != nil {
		t.Fatal(err)
	}
	if _, err := p.EncryptUpdate(h, all[:5]); err != nil {
		t.Fatal(err)
	}
	if _, err := p.EncryptFinal(h); !is(err, pkcs11.CKR_DATA_LEN_RANGE) {
		t.Fatalf("final over a partial block: %v", err)
	}
	if _, err := p.EncryptUpdate(h, all[:16]); !is(err, pkcs11.CKR_OPERATION_NOT_INITIALIZED) {
		t.Fatalf("update after an error: %v", err)
	}
	// Closing the session discards what is held.
	h2 := rwSession(t, p, slot, false)
	if err := p.EncryptInit(h2, cbc, key); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.CryptUpdate(false, h2, all[:40], output{null: true}); err != nil {
		t.Fatal(err)
	}
	if err := p.CloseSession(h2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.CryptUpdate(false, h2, all[:40], want(64)); !is(err, pkcs11.CKR_SESSION_HANDLE_INVALID) {
		t.Fatalf("the follow-up after C_CloseSession: %v, want CKR_SESSION_HANDLE_INVALID", err)
	}

	// One round trip, one read, for each length query and its call, as
	// miekg/pkcs11 makes them; two each without the held output.
	if err := p.EncryptInit(h, cbc, key); err != nil {
		t.Fatal(err)
	}
	before := daemonReads(d)
	if before < 0 {
		return
	}
	const n = 200
	for range n {
		if _, err := p.EncryptUpdate(h, all[:40]); err != nil {
			t.Fatal(err)
		}
	}
	if reads := daemonReads(d) - before; reads > n*5/4 {
		t.Errorf("the daemon read %d times for %d length queries and their C_EncryptUpdate, want about %d", reads, n, n)
	}
	if _, err := p.EncryptFinal(h); err != nil {
		t.Fatal(err)
	}
}
