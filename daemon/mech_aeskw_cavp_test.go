package daemon

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
)

// The NIST CAVP key wrap test vectors (SP 800-38F, KWVS): the files of
// NIST's kwtestvectors.zip, as Debian ships them in the package
// python3-cryptography-vectors, which the test setup installs. Every
// record runs through the mechanism's wrap and unwrap; the first of each
// plaintext length also through a daemon, as C_WrapKey and C_UnwrapKey.
const cavpKWDir = "/usr/lib/python3/dist-packages/cryptography_vectors/keywrap/kwtestvectors"

// cavpRecord is one record: the KEK, the key data and the wrapped key, or
// (for an unwrap that must fail) no key data.
type cavpRecord struct {
	count   string
	k, p, c []byte
	fail    bool
	ptLen   string
}

func loadCAVP(t *testing.T, name string) []cavpRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(cavpKWDir, name))
	if errors.Is(err, os.ErrNotExist) && os.Getenv("CI") != "true" {
		t.Skipf("NIST CAVP key wrap vectors not installed (Debian package python3-cryptography-vectors): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []cavpRecord
	var cur *cavpRecord
	ptLen := ""
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<16), 1<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case strings.HasPrefix(line, "[PLAINTEXT LENGTH"):
			ptLen = strings.Trim(strings.TrimPrefix(line, "[PLAINTEXT LENGTH ="), " ]")
		case strings.HasPrefix(line, "COUNT ="):
			out = append(out, cavpRecord{count: strings.TrimSpace(strings.TrimPrefix(line, "COUNT =")), ptLen: ptLen})
			cur = &out[len(out)-1]
		case cur == nil:
		case strings.HasPrefix(line, "K ="):
			cur.k = hx(strings.TrimPrefix(line, "K ="))
		case strings.HasPrefix(line, "P ="):
			cur.p = hx(strings.TrimPrefix(line, "P ="))
		case strings.HasPrefix(line, "C ="):
			cur.c = hx(strings.TrimPrefix(line, "C ="))
		case line == "FAIL":
			cur.fail = true
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) != 500 {
		t.Fatalf("%s: %d records, want 500", name, len(out))
	}
	return out
}

// cavpFiles are the forward-cipher files: KW and KWP, wrap (AE) and unwrap
// (AD), each AES key size. (The _inv files use the inverse cipher as the
// wrapping function, which RFC 3394 and 5649 do not.)
func cavpFiles() (out []struct {
	name    string
	padded  bool
	decrypt bool
}) {
	for _, kw := range []string{"KW", "KWP"} {
		for _, dir := range []string{"AE", "AD"} {
			for _, size := range []string{"128", "192", "256"} {
				out = append(out, struct {
					name    string
					padded  bool
					decrypt bool
				}{fmt.Sprintf("%s_%s_%s.txt", kw, dir, size), kw == "KWP", dir == "AD"})
			}
		}
	}
	return out
}

func TestKeyWrapCAVP(t *testing.T) {
	t.Parallel()
	total, failures := 0, 0
	for _, file := range cavpFiles() {
		w := keyWrap{padded: file.padded}
		iv := kwDefaultIV
		if file.padded {
			iv = kwpDefaultIV
		}
		for _, r := range loadCAVP(t, file.name) {
			b, err := aes.NewCipher(r.k)
			if err != nil {
				t.Fatalf("%s COUNT %s: %v", file.name, r.count, err)
			}
			total++
			switch {
			case !file.decrypt:
				got, err := w.seal(b, iv, r.p)
				if err != nil || !bytes.Equal(got, r.c) {
					t.Errorf("%s COUNT %s (%s bits): wrapped %x, %v", file.name, r.count, r.ptLen, got, err)
				}
			case r.fail:
				failures++
				if got, err := w.open(b, iv, r.c); err == nil {
					t.Errorf("%s COUNT %s: an unwrap that must fail gave %x", file.name, r.count, got)
				}
			default:
				got, err := w.open(b, iv, r.c)
				if err != nil || !bytes.Equal(got, r.p) {
					t.Errorf("%s COUNT %s (%s bits): unwrapped %x, %v", file.name, r.count, r.ptLen, got, err)
				}
			}
		}
	}
	if total != 6000 || failures != 600 {
		t.Fatalf("%d records with %d failures, want 6000 with 600", total, failures)
	}
}

// TestKeyWrapCAVPThroughDaemon runs the first record of every plaintext
// length of every file (and the first that must fail) as a client does:
// C_WrapKey of a key holding the key data, C_UnwrapKey of the wrapped key.
func TestKeyWrapCAVPThroughDaemon(t *testing.T) {
	t.Parallel()
	_, cl, _, h := symUser(t)
	for _, file := range cavpFiles() {
		m := uint64(ck.CKM_AES_KEY_WRAP)
		if file.padded {
			m = ck.CKM_AES_KEY_WRAP_KWP
		}
		seen := map[string]bool{}
		for _, r := range loadCAVP(t, file.name) {
			// The first record of each length, and its first failing one.
			which := fmt.Sprint(r.ptLen, r.fail)
			if seen[which] {
				continue
			}
			seen[which] = true
			kek := cl.secret(h, ck.CKK_AES, r.k)
			switch {
			case !file.decrypt:
				k := cl.secret(h, ck.CKK_GENERIC_SECRET, r.p, AB(ck.CKA_EXTRACTABLE, true))
				if got := cl.wrapKey(ck.CKR_OK, h, mech(m), kek, k); !bytes.Equal(got, r.c) {
					t.Errorf("%s COUNT %s (%s bits): C_WrapKey gave %x", file.name, r.count, r.ptLen, got)
				}
			case r.fail:
				if rv, _ := cl.call("C_UnwrapKey", U(h), mech(m), U(kek), B(r.c), T(readable(ck.CKK_GENERIC_SECRET)...), none()); rv != ck.CKR_WRAPPED_KEY_INVALID {
					t.Errorf("%s COUNT %s: C_UnwrapKey of a bad wrap gave %#x", file.name, r.count, rv)
				}
			default:
				u := cl.unwrapKey(ck.CKR_OK, h, mech(m), kek, r.c, readable(ck.CKK_GENERIC_SECRET)...)
				if got := cl.value(h, u); !bytes.Equal(got, r.p) {
					t.Errorf("%s COUNT %s (%s bits): C_UnwrapKey gave %x", file.name, r.count, r.ptLen, got)
				}
			}
		}
	}
}
