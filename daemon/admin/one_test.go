package admin

import (
	"errors"
	"strings"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
)

// obj is a key object as one sees it: a name, a class, a pair id.
type obj struct {
	name  string
	class uint64
	pair  string
}

func pickOne(sel []obj) ([]obj, error) {
	return one(sel, adminapi.KeySelector{Key: "tls"}, func(o obj) uint64 { return o.class },
		func(x, y obj) bool {
			return x.pair == y.pair && x.class != ck.CKO_SECRET_KEY && y.class != ck.CKO_SECRET_KEY
		},
		func(o obj) string { return o.name }, func(o obj) string { return o.pair })
}

// TestOne: a pair is one key; two pairs, a pair and a lone half, or two
// secret keys are two keys, refused with both named.
func TestOne(t *testing.T) {
	priv, pub := uint64(ck.CKO_PRIVATE_KEY), uint64(ck.CKO_PUBLIC_KEY)
	for _, tc := range []struct {
		name string
		sel  []obj
		want string // the names picked, or the candidates listed
		code string
	}{
		{"none", nil, "", adminapi.CodeNotFound},
		{"one", []obj{{"a", priv, "1"}}, "a", ""},
		{"a pair", []obj{{"b", pub, "1"}, {"a", priv, "1"}}, "b a", ""},
		{"two pairs", []obj{{"a", priv, "1"}, {"b", pub, "1"}, {"c", priv, "2"}, {"d", pub, "2"}}, "a with b (id 1); c with d (id 2)", adminapi.CodeAmbiguous},
		{"a pair and a half", []obj{{"a", priv, "1"}, {"b", pub, "1"}, {"c", pub, "2"}}, "a with b (id 1); c (id 2)", adminapi.CodeAmbiguous},
		{"two privates of one id", []obj{{"a", priv, "1"}, {"c", priv, "1"}}, "a (id 1); c (id 1)", adminapi.CodeAmbiguous},
		{"two secret keys", []obj{{"a", ck.CKO_SECRET_KEY, "1"}, {"b", ck.CKO_SECRET_KEY, "1"}}, "a (id 1); b (id 1)", adminapi.CodeAmbiguous},
	} {
		got, err := pickOne(tc.sel)
		var ae *adminapi.Error
		switch {
		case tc.code == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.code != "" && (!errors.As(err, &ae) || ae.Code != tc.code || !strings.Contains(ae.Message, tc.want)):
			t.Errorf("%s: %v, want %s with %q", tc.name, err, tc.code, tc.want)
		case tc.code == "":
			var names []string
			for _, o := range got {
				names = append(names, o.name)
			}
			if strings.Join(names, " ") != tc.want {
				t.Errorf("%s: picked %v, want %s", tc.name, names, tc.want)
			}
		}
	}
}
