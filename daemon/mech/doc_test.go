package mech

import (
	"fmt"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"os"
	"slices"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
)

// docs/mechanisms.md lists every mechanism of the tables, with its key
// types, key sizes, flags and what the legacy policy changes. The table is
// made from the tables themselves and checked here; HSMEMU_UPDATE_DOCS=1
// writes it.

const (
	docFile     = "../../docs/mechanisms.md"
	docTableBeg = "<!-- The table is generated: HSMEMU_UPDATE_DOCS=1 go test ./daemon/mech -run TestMechanismDoc -->\n"
	docTableEnd = "<!-- end of the generated table -->\n"
)

// ckNames maps the values of the ck package's constants with a prefix
// ("CKM_", "CKK_") to their names.
func ckNames(t *testing.T, prefix string) map[uint64]string {
	t.Helper()
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, "../../cryptoki/ck", func(fi fs.FileInfo) bool { return !strings.HasSuffix(fi.Name(), "_test.go") }, 0)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, f := range pkgs["ck"].Files {
		if len(f.Imports) == 0 {
			files = append(files, f)
		}
	}
	pkg, err := new(types.Config).Check("ck", fset, files, nil)
	if err != nil {
		t.Fatal(err)
	}
	names := map[uint64]string{}
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok || !strings.HasPrefix(name, prefix) || name == "CKK_ECDSA" {
			continue // CKK_ECDSA: CKK_EC's older name
		}
		v, _ := constant.Uint64Val(c.Val())
		if old, dup := names[v]; dup {
			t.Fatalf("%s and %s are both %#x", old, name, v)
		}
		names[v] = name
	}
	return names
}

var flagNames = []struct {
	f    uint64
	name string
}{
	{ck.CKF_ENCRYPT, "encrypt"}, {ck.CKF_DECRYPT, "decrypt"}, {ck.CKF_DIGEST, "digest"},
	{ck.CKF_SIGN, "sign"}, {ck.CKF_VERIFY, "verify"}, {ck.CKF_GENERATE, "generate"},
	{ck.CKF_GENERATE_KEY_PAIR, "generate key pair"}, {ck.CKF_WRAP, "wrap"}, {ck.CKF_UNWRAP, "unwrap"},
	{ck.CKF_DERIVE, "derive"}, {ck.CKF_EC_F_P, "EC_F_P"}, {ck.CKF_EC_NAMEDCURVE, "EC_NAMEDCURVE"},
	{ck.CKF_EC_UNCOMPRESS, "EC_UNCOMPRESS"},
	{ck.CKF_MESSAGE_ENCRYPT, "message encrypt"}, {ck.CKF_MESSAGE_DECRYPT, "message decrypt"},
	{ck.CKF_MESSAGE_SIGN, "message sign"}, {ck.CKF_MESSAGE_VERIFY, "message verify"},
	{ck.CKF_MULTI_MESSAGE, "multi-message"},
	{ck.CKF_ENCAPSULATE, "encapsulate"}, {ck.CKF_DECAPSULATE, "decapsulate"},
}

func flagsText(f uint64) string {
	var out []string
	for _, n := range flagNames {
		if f&n.f != 0 {
			out = append(out, n.name)
			f &^= n.f
		}
	}
	if f != 0 {
		out = append(out, fmt.Sprintf("%#x", f))
	}
	return strings.Join(out, ", ")
}

// sizeUnit is what a mechanism's key sizes count, as the specification
// says for each: bytes for AES, DES, the HMAC and ChaCha20 key
// generations and the post-quantum keys (their public keys' sizes);
// bits for the others.
func sizeUnit(m *Mechanism) string {
	kts := m.keyTypes
	if m.genKeyType != 0 || m.generate != nil {
		kts = []uint64{m.genKeyType}
	}
	for _, kt := range kts {
		switch {
		case kt == ck.CKK_AES, kt == ck.CKK_DES, kt == ck.CKK_DES2, kt == ck.CKK_DES3:
			return "bytes"
		case kt == ck.CKK_ML_KEM, kt == ck.CKK_ML_DSA, kt == ck.CKK_SLH_DSA:
			return "bytes"
		case m.generate != nil && kt != ck.CKK_GENERIC_SECRET && kt != ck.CKK_DSA:
			return "bytes" // HMAC and ChaCha20 key generation
		}
	}
	return "bits"
}

func sizesText(m *Mechanism) string {
	i := m.info
	if i.MinKeySize == 0 && i.MaxKeySize == 0 {
		return ""
	}
	if i.MinKeySize == i.MaxKeySize {
		return fmt.Sprintf("%d %s", i.MinKeySize, sizeUnit(m))
	}
	return fmt.Sprintf("%d to %d %s", i.MinKeySize, i.MaxKeySize, sizeUnit(m))
}

func keyTypesText(m *Mechanism, kts map[uint64]string) string {
	list := m.keyTypes
	if m.generate != nil || m.generatePair != nil {
		list = []uint64{m.genKeyType}
	}
	var out []string
	for _, kt := range list {
		n := strings.TrimPrefix(kts[kt], "CKK_")
		if n == "" {
			n = fmt.Sprintf("%#x", kt)
		}
		out = append(out, n)
	}
	if m.generate != nil || m.generatePair != nil {
		if m.genClass == ck.CKO_DOMAIN_PARAMETERS {
			return "makes " + strings.Join(out, ", ") + " domain parameters"
		}
		return "makes " + strings.Join(out, ", ")
	}
	return strings.Join(out, ", ")
}

// mechanismTable renders the table of docs/mechanisms.md.
func mechanismTable(t *testing.T) string {
	modern := testTable(t)
	legacy := modern.WithLegacy()
	names, kts := ckNames(t, "CKM_"), ckNames(t, "CKK_")
	var b strings.Builder
	b.WriteString("| mechanism | key types | key sizes | flags | legacy policy |\n")
	b.WriteString("| --- | --- | --- | --- | --- |\n")
	types := slices.Clone(legacy.Types())
	slices.SortFunc(types, func(a, b uint64) int { return strings.Compare(names[a], names[b]) })
	for _, typ := range types {
		name, ok := names[typ]
		if !ok {
			t.Fatalf("mechanism %#x has no name in cryptoki/ck", typ)
		}
		l, _ := legacy.Get(typ)
		m, inModern := modern.Get(typ)
		note := ""
		switch {
		case !inModern:
			m, note = l, "only with it"
		case m.info != l.info:
			var diff []string
			if m.info.MinKeySize != l.info.MinKeySize {
				diff = append(diff, fmt.Sprintf("from %d %s", l.info.MinKeySize, sizeUnit(l)))
			}
			if m.info.Flags != l.info.Flags {
				diff = append(diff, flagsText(l.info.Flags&^m.info.Flags))
			}
			note = "with it: " + strings.Join(diff, "; ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", name, keyTypesText(m, kts), sizesText(m), flagsText(m.info.Flags), note)
	}
	return b.String()
}

func TestMechanismDoc(t *testing.T) {
	want := mechanismTable(t)
	b, err := os.ReadFile(docFile)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	beg, end := strings.Index(doc, docTableBeg), strings.Index(doc, docTableEnd)
	if beg < 0 || end < beg {
		t.Fatalf("%s: no generated table between %q and %q", docFile, docTableBeg, docTableEnd)
	}
	got := doc[beg+len(docTableBeg) : end]
	if got == want {
		return
	}
	if os.Getenv("HSMEMU_UPDATE_DOCS") != "" {
		doc = doc[:beg+len(docTableBeg)] + want + doc[end:]
		if err := os.WriteFile(docFile, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s's table is not the tables'; HSMEMU_UPDATE_DOCS=1 go test ./daemon/mech -run TestMechanismDoc rewrites it. It should read:\n%s", docFile, want)
}
