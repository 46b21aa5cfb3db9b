package p11uri

import (
	"reflect"
	"strings"
	"testing"
)

// TestParseRFC7512 reads the examples of RFC 7512, section 3.
func TestParseRFC7512(t *testing.T) {
	for _, tc := range []struct {
		uri   string
		path  []Attr
		query []Attr
	}{
		{"pkcs11:", nil, nil},
		{"pkcs11:object=my-pubkey;type=public", []Attr{{"object", "my-pubkey"}, {"type", "public"}}, nil},
		{"pkcs11:object=my-key;type=private?pin-source=file:/etc/token",
			[]Attr{{"object", "my-key"}, {"type", "private"}}, []Attr{{"pin-source", "file:/etc/token"}}},
		{"pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BE%2D%C6%26%91%B9%1E%0D%E2%DE%C1%6D%AB%DA%B3%AE%92;serial=?pin-source=file:/etc/token_pin",
			[]Attr{{"token", "The Software PKCS#11 Softtoken"}, {"manufacturer", "Snake Oil, Inc."}, {"model", "1.0"}, {"object", "my-certificate"},
				{"type", "cert"}, {"id", "\x69\x95\x3e\x5c\xf4\xbe\x2d\xc6\x26\x91\xb9\x1e\x0d\xe2\xde\xc1\x6d\xab\xda\xb3\xae\x92"}, {"serial", ""}},
			[]Attr{{"pin-source", "file:/etc/token_pin"}}},
		{"pkcs11:object=my-sign-key;type=private?module-name=mypkcs11",
			[]Attr{{"object", "my-sign-key"}, {"type", "private"}}, []Attr{{"module-name", "mypkcs11"}}},
		{"pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1",
			[]Attr{{"object", "my-sign-key"}, {"type", "private"}}, []Attr{{"module-path", "/mnt/libmypkcs11.so.1"}}},
		{"pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin",
			[]Attr{{"token", "Software PKCS#11 softtoken"}, {"manufacturer", "Snake Oil, Inc."}}, []Attr{{"pin-value", "the-pin"}}},
		{"pkcs11:slot-description=Sun%20Metaslot", []Attr{{"slot-description", "Sun Metaslot"}}, nil},
		{"pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23",
			[]Attr{{"library-manufacturer", "Snake Oil, Inc."}, {"library-description", "Soft Token Library"}, {"library-version", "1.23"}}, nil},
		{"pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06",
			[]Attr{{"token", "My token% created by Joe"}, {"library-version", "3"}, {"id", "\x01\x02\x03\xba\xdd\xca\xfe\x04\x05\x06"}}, nil},
		{"pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert",
			[]Attr{{"token", "A name with a substring %;"}, {"object", "my-certificate"}, {"type", "cert"}}, nil},
		{"pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert",
			[]Attr{{"token", "Name with a small A with acute: á"}, {"object", "my-certificate"}, {"type", "cert"}}, nil},
		{"pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b",
			[]Attr{{"token", "my-token"}, {"object", "my-certificate"}, {"type", "cert"}, {"vendor-aaa", "value-a"}},
			[]Attr{{"pin-source", "file:/etc/token_pin"}, {"vendor-bbb", "value-b"}}},
		{"PKCS11:slot-id=3", []Attr{{"slot-id", "3"}}, nil},
	} {
		u, err := Parse(tc.uri)
		if err != nil {
			t.Errorf("%s: %v", tc.uri, err)
			continue
		}
		if !reflect.DeepEqual(u.Path, tc.path) || !reflect.DeepEqual(u.Query, tc.query) {
			t.Errorf("%s:\n got %q %q\nwant %q %q", tc.uri, u.Path, u.Query, tc.path, tc.query)
		}
	}
}

func TestParseRefuses(t *testing.T) {
	for _, s := range []string{
		"tls", "pkcs11", "pkcs11:object", "pkcs11:=x", "pkcs11:object=a;object=b", "pkcs11:object=a%2",
		"pkcs11:object=a%zz", "pkcs11:object=a b", "pkcs11:object=a/b", "pkcs11:object=a?pin-value=1&pin-value=2",
		"pkcs11:type=key", "pkcs11:slot-id=x", "pkcs11:library-version=1.x", "pkcs11:ob ject=a", "pkcs11:object=é",
	} {
		if u, err := Parse(s); err == nil {
			t.Errorf("%q parsed: %+v", s, u)
		}
	}
}

// TestParseHidesPIN: a malformed pin-value is refused without the PIN in
// the error, which the command line prints.
func TestParseHidesPIN(t *testing.T) {
	for _, s := range []string{"pkcs11:token=t?pin-value=hunter2 x", "pkcs11:token=t?pin-value=hunter2%zz", "pkcs11:token=t;pin-value=hunter2/x"} {
		_, err := Parse(s)
		if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "pin-value") {
			t.Errorf("%q: %v; want an error naming pin-value without its value", s, err)
		}
	}
}

func TestString(t *testing.T) {
	u := &URI{}
	u.Set(Type, "private")
	u.Set(Object, "tls key;1")
	u.Set(ID, "\x01\xab")
	u.Set(Token, "signing")
	u.Query = []Attr{{PINSource, "file:/run/pin"}}
	want := "pkcs11:token=signing;id=%01%AB;object=tls%20key%3B1;type=private?pin-source=file:/run/pin"
	if got := u.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// FuzzParse: whatever parses writes back as a URI that parses to the
// same attributes, and writing that again changes nothing.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"pkcs11:", "pkcs11:token=a%20b;object=c;type=private;id=%01", "pkcs11:x-v=1?pin-source=file:/a&m=%26",
		"pkcs11:library-version=1.2;slot-id=7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Parse(s)
		if err != nil {
			return
		}
		out := u.String()
		v, err := Parse(out)
		if err != nil {
			t.Fatalf("%q wrote %q, which does not parse: %v", s, out, err)
		}
		sortStd := func(x *URI) map[string]string {
			m := map[string]string{}
			for _, a := range x.Path {
				m[a.Name] = a.Value
			}
			return m
		}
		if !reflect.DeepEqual(sortStd(u), sortStd(v)) || !reflect.DeepEqual(u.Query, v.Query) || len(u.Path) != len(v.Path) {
			t.Fatalf("%q -> %q: %+v, then %+v", s, out, u, v)
		}
		if again := v.String(); again != out {
			t.Fatalf("%q wrote %q, then %q", s, out, again)
		}
		if !strings.HasPrefix(out, Scheme) {
			t.Fatalf("%q", out)
		}
	})
}
