// Package mechtest reads the outside test vectors the mechanisms are
// checked against: Wycheproof's JSON files and NIST's CAVP key wrap
// files. The mechanisms' own tests run every vector in process; the token
// engine's tests run a sample through its calls. Without the vectors a
// test skips, except under CI=true (internal/testenv).
package mechtest

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"hsmemu/internal/testenv"
)

// Hex decodes hex written with spaces, as the RFCs print it.
func Hex(s string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		panic(err)
	}
	return b
}

// Wycheproof's vectors come from the test-only requirement
// github.com/c2sp/wycheproof (its go.mod declares the lower-case path;
// daemon/mech/wycheproof_tools.go keeps it in go.mod). `go mod download`
// fetches it on first use and says where it is.
var wycheproofDir struct {
	once sync.Once
	dir  string
	err  error
}

// WycheproofFile returns a file of the module's testvectors_v1.
func WycheproofFile(t testing.TB, name string) []byte {
	t.Helper()
	wycheproofDir.once.Do(func() {
		// go test puts its own go first on PATH.
		out, err := exec.Command("go", "mod", "download", "-json", "github.com/c2sp/wycheproof").Output()
		if err != nil {
			wycheproofDir.err = err
			return
		}
		var info struct{ Dir string }
		wycheproofDir.err = json.Unmarshal(out, &info)
		wycheproofDir.dir = info.Dir
	})
	if wycheproofDir.err != nil || wycheproofDir.dir == "" {
		testenv.Missing(t, "the Wycheproof module is not available (go mod download github.com/c2sp/wycheproof): %v", wycheproofDir.err)
	}
	b, err := os.ReadFile(filepath.Join(wycheproofDir.dir, "testvectors_v1", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CAVPKeyWrapDir holds the NIST CAVP key wrap test vectors (SP 800-38F,
// KWVS): the files of NIST's kwtestvectors.zip, as Debian ships them in
// the package python3-cryptography-vectors, which the test setup
// installs.
const CAVPKeyWrapDir = "/usr/lib/python3/dist-packages/cryptography_vectors/keywrap/kwtestvectors"

// CAVPRecord is one record: the KEK, the key data and the wrapped key, or
// (for an unwrap that must fail) no key data.
type CAVPRecord struct {
	Count   string
	K, P, C []byte
	Fail    bool
	PtLen   string // the plaintext length, in bits, as the file says it
}

// CAVPFile is one forward-cipher file: KW or KWP, wrap (AE) or unwrap
// (AD), one AES key size.
type CAVPFile struct {
	Name    string
	Padded  bool // KWP
	Decrypt bool // AD: unwrap, some records of which must fail
}

// CAVPFiles are the forward-cipher files. (The _inv files use the inverse
// cipher as the wrapping function, which RFC 3394 and 5649 do not.)
func CAVPFiles() []CAVPFile {
	var out []CAVPFile
	for _, kind := range []string{"KW", "KWP"} {
		for _, dir := range []string{"AE", "AD"} {
			for _, bits := range []string{"128", "192", "256"} {
				out = append(out, CAVPFile{Name: kind + "_" + dir + "_" + bits + ".txt", Padded: kind == "KWP", Decrypt: dir == "AD"})
			}
		}
	}
	return out
}

// LoadCAVP reads one file's 500 records.
func LoadCAVP(t testing.TB, name string) []CAVPRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(CAVPKeyWrapDir, name))
	if errors.Is(err, os.ErrNotExist) {
		testenv.Missing(t, "NIST CAVP key wrap vectors not installed (Debian package python3-cryptography-vectors): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []CAVPRecord
	var cur *CAVPRecord
	ptLen := ""
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<16), 1<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case strings.HasPrefix(line, "[PLAINTEXT LENGTH"):
			ptLen = strings.Trim(strings.TrimPrefix(line, "[PLAINTEXT LENGTH ="), " ]")
		case strings.HasPrefix(line, "COUNT ="):
			out = append(out, CAVPRecord{Count: strings.TrimSpace(strings.TrimPrefix(line, "COUNT =")), PtLen: ptLen})
			cur = &out[len(out)-1]
		case cur == nil:
		case strings.HasPrefix(line, "K ="):
			cur.K = Hex(strings.TrimPrefix(line, "K ="))
		case strings.HasPrefix(line, "P ="):
			cur.P = Hex(strings.TrimPrefix(line, "P ="))
		case strings.HasPrefix(line, "C ="):
			cur.C = Hex(strings.TrimPrefix(line, "C ="))
		case line == "FAIL":
			cur.Fail = true
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

// HexBytes is a Wycheproof hex string.
type HexBytes []byte

func (h *HexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

// Vectors is a Wycheproof file: the fields hsmemu's tests read, of the
// symmetric and the public-key schemas.
type Vectors struct {
	Algorithm     string  `json:"algorithm"`
	NumberOfTests int     `json:"numberOfTests"`
	TestGroups    []Group `json:"testGroups"`
}

// Group is a group of tests sharing their parameters (and, for public-key
// files, their key).
type Group struct {
	IVSize    int    `json:"ivSize"`  // bits
	KeySize   int    `json:"keySize"` // bits
	TagSize   int    `json:"tagSize"` // bits
	Sha       string `json:"sha"`
	Mgf       string `json:"mgf"`
	MgfSha    string `json:"mgfSha"`
	SLen      uint64 `json:"sLen"`
	Curve     string `json:"curve"`    // ECDH and XDH files
	Encoding  string `json:"encoding"` // ECDH files: the public key's
	PublicKey struct {
		Modulus        HexBytes `json:"modulus"`
		PublicExponent HexBytes `json:"publicExponent"`
		Uncompressed   HexBytes `json:"uncompressed"`
		Pk             HexBytes `json:"pk"`
		Curve          string   `json:"curve"`
		// DSA.
		P HexBytes `json:"p"`
		Q HexBytes `json:"q"`
		G HexBytes `json:"g"`
		Y HexBytes `json:"y"`
	} `json:"publicKey"`
	PrivateKeyPkcs8 HexBytes `json:"privateKeyPkcs8"` // signature generation files
	PrivateKey      struct {
		Modulus         HexBytes `json:"modulus"`
		PublicExponent  HexBytes `json:"publicExponent"`
		PrivateExponent HexBytes `json:"privateExponent"`
		Prime1          HexBytes `json:"prime1"`
		Prime2          HexBytes `json:"prime2"`
		Exponent1       HexBytes `json:"exponent1"`
		Exponent2       HexBytes `json:"exponent2"`
		Coefficient     HexBytes `json:"coefficient"`
	} `json:"privateKey"`
	Tests []Test `json:"tests"`
}

// Test is one vector.
type Test struct {
	TcID    int      `json:"tcId"`
	Result  string   `json:"result"` // valid, invalid or acceptable
	Key     HexBytes `json:"key"`
	IV      HexBytes `json:"iv"`
	AAD     HexBytes `json:"aad"`
	Msg     HexBytes `json:"msg"`
	CT      HexBytes `json:"ct"`
	Tag     HexBytes `json:"tag"`
	IKM     HexBytes `json:"ikm"`
	Salt    HexBytes `json:"salt"`
	Info    HexBytes `json:"info"`
	Size    int      `json:"size"`
	OKM     HexBytes `json:"okm"`
	Sig     HexBytes `json:"sig"`
	Label   HexBytes `json:"label"`
	Public  HexBytes `json:"public"`
	Private HexBytes `json:"private"`
	Shared  HexBytes `json:"shared"`
	Flags   []string `json:"flags"`
}

// Wycheproof reads a Wycheproof file and checks it holds the number of
// tests it says.
func Wycheproof(t testing.TB, name string) *Vectors {
	t.Helper()
	var v Vectors
	if err := json.Unmarshal(WycheproofFile(t, name), &v); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	n := 0
	for _, g := range v.TestGroups {
		n += len(g.Tests)
	}
	if n == 0 || n != v.NumberOfTests {
		t.Fatalf("%s: %d tests, the file says %d", name, n, v.NumberOfTests)
	}
	return &v
}

// CAVPDir holds the NIST CAVP files Debian ships in the package
// python3-cryptography-vectors, which the test setup installs.
const CAVPDir = "/usr/lib/python3/dist-packages/cryptography_vectors"

// TDESRecord is one record of a CAVP triple-DES file (TDESVS): the three
// DES keys (equal for the single-DES records of the known-answer files),
// the IV of a CBC file, and the plaintext and ciphertext.
type TDESRecord struct {
	Count      string
	Decrypt    bool // from the file's [DECRYPT] section
	Keys       [3][]byte
	IV         []byte
	Plain, CT  []byte
	File       string
	ThreeEqual bool // the file gave one key (KEYs): single DES
}

// TDESFiles are the ECB and CBC files of the triple-DES vectors: the
// multi-block messages (MMT, 1 to 3 keys) and the known-answer tests. The
// CBC-I files (interleaved CBC) are not PKCS#11's.
func TDESFiles() []string {
	var out []string
	for _, mode := range []string{"ECB", "CBC"} {
		for _, kind := range []string{"MMT1", "MMT2", "MMT3", "invperm", "permop", "subtab", "varkey", "vartext"} {
			out = append(out, filepath.Join("ciphers/3DES", mode, "T"+mode+kind+".rsp"))
		}
	}
	return out
}

// LoadTDES reads a CAVP triple-DES file (a path under CAVPDir).
func LoadTDES(t testing.TB, name string) []TDESRecord {
	t.Helper()
	f, err := os.Open(filepath.Join(CAVPDir, name))
	if errors.Is(err, os.ErrNotExist) {
		testenv.Missing(t, "NIST CAVP triple-DES vectors not installed (Debian package python3-cryptography-vectors): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []TDESRecord
	var cur *TDESRecord
	decrypt := false
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<16), 1<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		key, val, _ := strings.Cut(line, "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case line == "[ENCRYPT]":
			decrypt = false
		case line == "[DECRYPT]":
			decrypt = true
		case key == "COUNT":
			out = append(out, TDESRecord{Count: val, Decrypt: decrypt, File: name})
			cur = &out[len(out)-1]
		case cur == nil:
		case key == "KEYs":
			k := Hex(val)
			cur.Keys, cur.ThreeEqual = [3][]byte{k, k, k}, true
		case key == "KEY1":
			cur.Keys[0] = Hex(val)
		case key == "KEY2":
			cur.Keys[1] = Hex(val)
		case key == "KEY3":
			cur.Keys[2] = Hex(val)
		case key == "IV":
			cur.IV = Hex(val)
		case key == "PLAINTEXT":
			cur.Plain = Hex(val)
		case key == "CIPHERTEXT":
			cur.CT = Hex(val)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no records", name)
	}
	return out
}

// CMACRecord is one record of the triple-DES CMAC file (SP 800-38B's
// examples): the three DES keys, the message and the MAC.
type CMACRecord struct {
	Count        string
	Keys         [3][]byte
	Message, MAC []byte
}

// LoadTDESCMAC reads CMAC/nist-800-38b-3des.txt.
func LoadTDESCMAC(t testing.TB) []CMACRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(CAVPDir, "CMAC/nist-800-38b-3des.txt"))
	if errors.Is(err, os.ErrNotExist) {
		testenv.Missing(t, "NIST triple-DES CMAC vectors not installed (Debian package python3-cryptography-vectors): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []CMACRecord
	var cur *CMACRecord
	for _, line := range strings.Split(string(b), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case key == "COUNT":
			out = append(out, CMACRecord{Count: val})
			cur = &out[len(out)-1]
		case cur == nil:
		case key == "KEY1":
			cur.Keys[0] = Hex(val)
		case key == "KEY2":
			cur.Keys[1] = Hex(val)
		case key == "KEY3":
			cur.Keys[2] = Hex(val)
		case key == "MESSAGE":
			cur.Message = Hex(val)
		case key == "OUTPUT":
			cur.MAC = Hex(val)
		}
	}
	if len(out) == 0 {
		t.Fatal("nist-800-38b-3des.txt: no records")
	}
	return out
}

// ChaChaRecord is one record of RFC 7539's ChaCha20 vectors as
// ciphers/ChaCha20/rfc7539.txt gives them.
type ChaChaRecord struct {
	Count             string
	Key, Nonce        []byte
	Counter           uint32
	Plain, Ciphertext []byte
}

// LoadChaCha20 reads ciphers/ChaCha20/rfc7539.txt.
func LoadChaCha20(t testing.TB) []ChaChaRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(CAVPDir, "ciphers/ChaCha20/rfc7539.txt"))
	if errors.Is(err, os.ErrNotExist) {
		testenv.Missing(t, "RFC 7539 ChaCha20 vectors not installed (Debian package python3-cryptography-vectors): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []ChaChaRecord
	var cur *ChaChaRecord
	for _, line := range strings.Split(string(b), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), "=")
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case key == "COUNT":
			out = append(out, ChaChaRecord{Count: val})
			cur = &out[len(out)-1]
		case cur == nil:
		case key == "KEY":
			cur.Key = Hex(val)
		case key == "NONCE":
			cur.Nonce = Hex(val)
		case key == "INITIAL_BLOCK_COUNTER":
			n, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				t.Fatal(err)
			}
			cur.Counter = uint32(n)
		case key == "PLAINTEXT":
			cur.Plain = Hex(val)
		case key == "CIPHERTEXT":
			cur.Ciphertext = Hex(val)
		}
	}
	if len(out) == 0 {
		t.Fatal("rfc7539.txt: no records")
	}
	return out
}
