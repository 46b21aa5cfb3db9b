package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
)

// A Go client through miekg/pkcs11, the binding most Go programs use,
// with hsmemu and SoftHSMv2 loaded into the same process and measured in
// the same run: miekg/pkcs11 asks for every output's length with a NULL
// buffer first, and each call is a cgo call that may block, so these are
// the figures a Go application sees.
//
//	go test -run '^$' -bench 'Miekg' -count 6 ./cryptoki/e2e/ > miekg.txt
//	benchstat -col /module miekg.txt

// miekgModule is one module loaded through miekg/pkcs11, logged in.
type miekgModule struct {
	name string
	p    *pkcs11.Ctx
	s    pkcs11.SessionHandle
}

// initFresh initialises the first token that is not, and returns its slot.
func initFresh(b testing.TB, p *pkcs11.Ctx, label string) uint {
	b.Helper()
	slots, err := p.GetSlotList(true)
	if err != nil {
		b.Fatal(err)
	}
	for _, s := range slots {
		info, err := p.GetTokenInfo(s)
		if err != nil || info.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			continue
		}
		if err := p.InitToken(s, soPIN, label); err != nil {
			b.Fatal(err)
		}
		slot := slotOf(b, p, label)
		h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			b.Fatal(err)
		}
		defer p.CloseSession(h)
		if err := p.Login(h, pkcs11.CKU_SO, soPIN); err != nil {
			b.Fatal(err)
		}
		if err := p.InitPIN(h, userPIN); err != nil {
			b.Fatal(err)
		}
		return slot
	}
	b.Fatal("no token to initialise")
	return 0
}

func openMiekg(b *testing.B, name, path string) *miekgModule {
	b.Helper()
	p := pkcs11.New(path)
	if p == nil {
		b.Fatalf("%s does not load", path)
	}
	if err := p.Initialize(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Finalize(); p.Destroy() })
	slot := initFresh(b, p, "miekg-bench")
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		b.Fatal(err)
	}
	return &miekgModule{name: name, p: p, s: s}
}

func BenchmarkMiekg(b *testing.B) {
	d := startDaemon(b)
	b.Setenv("HSMEMU_SOCKET", d.sock)
	soft, softEnv := softhsm(b)
	for _, kv := range softEnv {
		k, v, _ := strings.Cut(kv, "=")
		b.Setenv(k, v)
	}
	mods := []*miekgModule{openMiekg(b, "softhsm", soft), openMiekg(b, "hsmemu", need(b).module)}

	for _, objects := range []string{"token", "session"} {
		for _, m := range mods {
			p, s := m.p, m.s
			tok := objects == "token"
			aes := func(extractable bool) pkcs11.ObjectHandle {
				k, err := p.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
					pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tok), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
					pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32), pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
					pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, true), pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, extractable),
				})
				if err != nil {
					b.Fatalf("%s: C_GenerateKey: %v", m.name, err)
				}
				return k
			}
			kek, key := aes(false), aes(true)
			pub, priv, err := p.GenerateKeyPair(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
				[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tok), pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
					pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07})},
				[]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, tok), pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
					pkcs11.NewAttribute(pkcs11.CKA_SIGN, true)})
			if err != nil {
				b.Fatalf("%s: C_GenerateKeyPair: %v", m.name, err)
			}
			// KWP where the module has it (hsmemu), KW_PAD (SoftHSMv2).
			wrapMech := []*pkcs11.Mechanism{pkcs11.NewMechanism(0x210B, nil)}
			if m.name == "softhsm" {
				wrapMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(0x210A, nil)}
			}
			ecdsa := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
			hash := make([]byte, 32)
			b.Run(fmt.Sprintf("op=wrap/objects=%s/module=%s", objects, m.name), func(b *testing.B) {
				for b.Loop() {
					if _, err := p.WrapKey(s, wrapMech, kek, key); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("op=sign-ecdsa-p256/objects=%s/module=%s", objects, m.name), func(b *testing.B) {
				for b.Loop() {
					if err := p.SignInit(s, ecdsa, priv); err != nil {
						b.Fatal(err)
					}
					if _, err := p.Sign(s, hash); err != nil {
						b.Fatal(err)
					}
				}
			})
			for _, o := range []pkcs11.ObjectHandle{kek, key, pub, priv} {
				p.DestroyObject(s, o)
			}
		}
	}
}
