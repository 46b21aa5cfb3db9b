package token

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha3"
	"slices"
	"testing"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
)

func TestDigests(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("digest")
	h := cl.Open(slot, false)

	list := cl.Must(ck.CKR_OK, "C_GetMechanismList", U(slot), Out(256))[1].Ulongs
	if !slices.Contains(list, ck.CKM_SHA256) || !slices.IsSorted(list) {
		t.Fatalf("mechanism list %x", list)
	}
	info := cl.Must(ck.CKR_OK, "C_GetMechanismInfo", U(slot), U(ck.CKM_SHA3_256), None())[2].Struct.(*wire.MechanismInfo)
	if info.Flags != ck.CKF_DIGEST {
		t.Fatalf("SHA3-256 info %+v", info)
	}
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_GetMechanismInfo", U(slot), U(0x7fff0000), None())

	abc := sha256.Sum256([]byte("abc"))
	// The size query keeps the operation, and the result, alive.
	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA256))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_DigestInit", U(h), M(ck.CKM_SHA256))
	out := cl.Must(ck.CKR_OK, "C_Digest", U(h), S("abc"), SizeQuery())
	if out[2].Length != 32 || out[2].Bytes != nil {
		t.Fatalf("size query: %+v", out[2])
	}
	cl.Must(ck.CKR_BUFFER_TOO_SMALL, "C_Digest", U(h), S("abc"), Out(16))
	out = cl.Must(ck.CKR_OK, "C_Digest", U(h), S("abc"), Out(64))
	if !bytes.Equal(out[2].Bytes, abc[:]) {
		t.Fatalf("SHA-256(abc) = %x", out[2].Bytes)
	}
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_Digest", U(h), S("abc"), Out(64))

	// Multi-part, SHA3.
	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA3_256))
	cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("a"))
	cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("bc"))
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_Digest", U(h), S("x"), Out(64))
	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA3_256))
	cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("abc"))
	out = cl.Must(ck.CKR_OK, "C_DigestFinal", U(h), Out(64))
	want := sha3.Sum256([]byte("abc"))
	if !bytes.Equal(out[1].Bytes, want[:]) {
		t.Fatalf("SHA3-256(abc) = %x", out[1].Bytes)
	}

	// C_DigestKey hashes a secret key's value without revealing it.
	rw := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(rw), U(ck.CKU_USER), S(UserPIN))
	key := cl.Create(rw, AESKey("k", true, false)...)
	cl.Must(ck.CKR_OK, "C_DigestInit", U(rw), M(ck.CKM_SHA256))
	cl.Must(ck.CKR_OK, "C_DigestKey", U(rw), U(key))
	out = cl.Must(ck.CKR_OK, "C_DigestFinal", U(rw), Out(64))
	kv := sha256.Sum256(bytes.Repeat([]byte{0x11}, 32))
	if !bytes.Equal(out[1].Bytes, kv[:]) {
		t.Fatalf("digest of the key: %x", out[1].Bytes)
	}
	data := cl.Create(rw, DataObject("d", false, false, "v")...)
	cl.Must(ck.CKR_OK, "C_DigestInit", U(rw), M(ck.CKM_SHA256))
	cl.Must(ck.CKR_KEY_INDIGESTIBLE, "C_DigestKey", U(rw), U(data))

	// A parameter where none is taken; an unknown mechanism.
	cl.Must(ck.CKR_MECHANISM_PARAM_INVALID, "C_DigestInit", U(h), wire.Value{Mechanism: &wire.Mechanism{Type: ck.CKM_SHA256, Present: true, Param: wire.Param{Kind: calls.PBytes, Bytes: []byte{1}}}})
	cl.Must(ck.CKR_MECHANISM_INVALID, "C_DigestInit", U(h), M(ck.CKM_MD5))
}

// TestKeptOutputGoesToItsCall: an output measured by one call is not handed
// to another.
func TestKeptOutputGoesToItsCall(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	slot := cl.NewToken("kept")
	h := cl.Open(slot, false)
	cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA256))
	cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("abc"))
	cl.Must(ck.CKR_OK, "C_DigestFinal", U(h), SizeQuery())
	cl.Must(ck.CKR_OPERATION_ACTIVE, "C_Digest", U(h), S("abc"), Out(64))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestFinal", U(h), Out(64))
}

// TestDigestKeyErrors: C_DigestKey without a digest operation is
// CKR_OPERATION_NOT_INITIALIZED, whatever the key, and a key it cannot
// take ends the operation, as every other error does.
func TestDigestKeyErrors(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	cl := d.dial(t)
	h := cl.Open(cl.NewToken("digestkey"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := cl.Create(h, AESKey("k", true, false)...)
	data := cl.Create(h, DataObject("d", false, false, "v")...)

	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestKey", U(h), U(0x7fffffff))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestKey", U(h), U(data))
	cl.Must(ck.CKR_OPERATION_NOT_INITIALIZED, "C_DigestKey", U(h), U(key))

	for _, c := range []struct {
		name string
		key  uint64
		code uint64
	}{
		{"no such key", 0x7fffffff, ck.CKR_KEY_HANDLE_INVALID},
		{"not a secret key", data, ck.CKR_KEY_INDIGESTIBLE},
	} {
		cl.Must(ck.CKR_OK, "C_DigestInit", U(h), M(ck.CKM_SHA256))
		cl.Must(ck.CKR_OK, "C_DigestUpdate", U(h), S("a"))
		cl.Must(c.code, "C_DigestKey", U(h), U(c.key))
		if rv, _ := cl.Call("C_DigestFinal", U(h), Out(64)); rv != ck.CKR_OPERATION_NOT_INITIALIZED {
			t.Errorf("%s: C_DigestFinal after C_DigestKey's %v = %v, want the operation ended", c.name, ck.Error(c.code), ck.Error(rv))
		}
	}
}
