package admin

import (
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/adminapi/p11uri"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// The administrator's key calls: list, show, export the public half,
// delete (softly), recover and purge. They act as the token's user, with
// its PIN, which opens the token for the call only: the login is counted
// like an application's, so it never closes the token under one.

// asUser opens the token as its user for the length of f (token.Engine's
// AsUser): the administrator's own application, logged in with the user
// PIN like any other.
func (a *call) asUser(ctx context.Context, label string, pin []byte, f func(ti keystore.TokenInfo, u *token.UserSession) error) error {
	ti, err := a.lookup(ctx, label)
	if err != nil {
		return err
	}
	return a.eng.AsUser(ctx, ti, a.who, pin, func(u *token.UserSession) error { return f(ti, u) })
}

// found is a live key object the admin selected.
type found struct {
	id   keystore.ObjectID
	uuid keystore.UUID
	obj  *token.Object
}

func isKeyClass(c uint64) bool {
	return c == ck.CKO_SECRET_KEY || c == ck.CKO_PRIVATE_KEY || c == ck.CKO_PUBLIC_KEY
}

// liveKeys returns the token's key objects that ref names (all of them for
// an empty ref). The token is open.
func (a *call) liveKeys(ctx context.Context, ti keystore.TokenInfo, ref adminapi.KeySelector) ([]found, error) {
	class, hasClass, err := classOf(ref)
	if err != nil {
		return nil, err
	}
	f := keystore.Filter{IncludePrivate: true}
	if ref.Key != "" {
		f.Label = []byte(ref.Key)
	}
	if ref.ID != "" {
		id, err := hex.DecodeString(ref.ID)
		if err != nil {
			return nil, adminapi.Errorf(adminapi.CodeBadRequest, "--id takes hex: %v", err)
		}
		f.ID = id
	}
	ids, err := a.store.Find(ctx, ti.UUID, f)
	if err != nil {
		return nil, err
	}
	var out []found
	for _, id := range ids {
		stored, err := a.store.Open(ctx, id)
		if errors.Is(err, keystore.ErrNotFound) {
			continue // deleted meanwhile
		}
		if errors.Is(err, keystore.ErrTampered) {
			continue // unusable, and recorded: the token's other keys are not
		}
		if err != nil {
			return nil, err
		}
		o, err := token.View(stored)
		if errors.Is(err, keystore.ErrTampered) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if !isKeyClass(o.Class()) || ref.UUID != "" && stored.UUID.String() != ref.UUID || hasClass && o.Class() != class {
			continue
		}
		out = append(out, found{id: id, uuid: stored.UUID, obj: o})
	}
	return out, nil
}

// openKey opens one live key object of an open token.
func (a *call) openKey(ctx context.Context, id keystore.ObjectID) (found, error) {
	stored, err := a.store.Open(ctx, id)
	if err != nil {
		return found{}, err
	}
	o, err := token.View(stored)
	if err != nil {
		return found{}, err
	}
	return found{id: id, uuid: stored.UUID, obj: o}, nil
}

// one narrows a selection to one key: one object, or the two halves of a
// key pair (a private and a public key of one type with one CKA_ID). A
// selection of several keys is refused, listing them.
func one[T any](sel []T, ref adminapi.KeySelector, class func(T) uint64, pairOf func(a, b T) bool, describe func(T) string, idOf func(T) string) ([]T, error) {
	if len(sel) == 0 {
		return nil, adminapi.Errorf(adminapi.CodeNotFound, "no key matches %s (`hsmemu key list` lists them)", ref.String())
	}
	keys := groupPairs(sel, class, pairOf)
	if len(keys) == 1 {
		return keys[0], nil
	}
	var cands []string
	for _, k := range keys {
		// The private half first, as people think of a pair.
		slices.SortStableFunc(k, func(x, y T) int { return cmpClass(class(x), class(y)) })
		var halves []string
		for _, o := range k {
			halves = append(halves, describe(o))
		}
		c := strings.Join(halves, " with ")
		if id := idOf(k[0]); id != "" {
			c += " (id " + id + ")"
		}
		cands = append(cands, c)
	}
	return nil, adminapi.Errorf(adminapi.CodeAmbiguous, "%d keys match %s: %s; name one with --uuid or --id (`hsmemu key list` shows them)",
		len(keys), ref.String(), strings.Join(cands, "; "))
}

// cmpClass orders a private key before its public key.
func cmpClass(x, y uint64) int {
	rank := func(c uint64) int {
		if c == ck.CKO_PUBLIC_KEY {
			return 1
		}
		return 0
	}
	return rank(x) - rank(y)
}

// groupPairs groups objects into keys: a private key and the public key
// of its pair are one key, any other object a key of its own.
func groupPairs[T any](sel []T, class func(T) uint64, pairOf func(a, b T) bool) [][]T {
	var keys [][]T
next:
	for _, o := range sel {
		for i, k := range keys {
			if len(k) == 1 && class(k[0]) != class(o) && pairOf(k[0], o) {
				keys[i] = append(k, o)
				continue next
			}
		}
		keys = append(keys, []T{o})
	}
	return keys
}

// liveKey is the one live key ref names (liveKeys narrowed by one). When
// none is live but a deleted one matches, that is the error: it can be
// recovered.
func (a *call) liveKey(ctx context.Context, ti keystore.TokenInfo, ref adminapi.KeySelector) ([]found, error) {
	sel, err := a.liveKeys(ctx, ti, ref)
	if err != nil {
		return nil, err
	}
	if len(sel) == 0 {
		del, err := a.deletedMatches(ctx, ti, ref)
		if err != nil {
			return nil, err
		}
		if len(del) > 0 {
			d := del[0]
			return nil, adminapi.Errorf(adminapi.CodeDeleted, "key %s (%s) was deleted on %s: `hsmemu key recover --token %s --uuid %s` brings it back, until %s",
				ref.String(), d.UUID, d.DeletedAt.UTC().Format(time.RFC3339), shellQuote(ti.Label), d.UUID, d.PurgeAfter.UTC().Format(time.RFC3339))
		}
	}
	return one(sel, ref, func(f found) uint64 { return f.obj.Class() }, pairOfLive, func(f found) string {
		return fmt.Sprintf("%s %s %s", f.uuid, keyTypeName(f.obj.KeyType()), token.ClassName(f.obj.Class()))
	}, func(f found) string { return hex.EncodeToString(attrValue(f.obj, ck.CKA_ID)) })
}

// labelFree refuses a new key's label that a live key of the token has,
// unless opts allow it.
func (a *call) labelFree(ctx context.Context, ti keystore.TokenInfo, opts adminapi.KeyOptions) error {
	if opts.AllowDuplicateLabel || opts.Label == "" {
		return nil
	}
	have, err := a.liveKeys(ctx, ti, adminapi.KeySelector{Key: opts.Label})
	if err != nil || len(have) == 0 {
		return err
	}
	var uuids []string
	for _, f := range have {
		uuids = append(uuids, f.uuid.String())
	}
	return adminapi.Errorf(adminapi.CodeExists, "token %q has a key labelled %q already (%s): choose another label, or give --allow-duplicate-label",
		ti.Label, opts.Label, strings.Join(uuids, ", "))
}

// shellQuote quotes a label for a command line people may paste.
func shellQuote(s string) string {
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:/@%+=,", c)) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}

func pairOfLive(x, y found) bool {
	cx, cy := x.obj.Class(), y.obj.Class()
	if !(cx == ck.CKO_PRIVATE_KEY && cy == ck.CKO_PUBLIC_KEY || cx == ck.CKO_PUBLIC_KEY && cy == ck.CKO_PRIVATE_KEY) {
		return false
	}
	ix, _ := x.obj.Attr(ck.CKA_ID)
	iy, _ := y.obj.Attr(ck.CKA_ID)
	return x.obj.KeyType() == y.obj.KeyType() && string(ix) == string(iy)
}

func pairOfDeleted(x, y keystore.Deleted) bool {
	if !(x.Class == ck.CKO_PRIVATE_KEY && y.Class == ck.CKO_PUBLIC_KEY || x.Class == ck.CKO_PUBLIC_KEY && y.Class == ck.CKO_PRIVATE_KEY) {
		return false
	}
	return x.KeyType != nil && y.KeyType != nil && *x.KeyType == *y.KeyType && string(x.CKAID) == string(y.CKAID)
}

// keyTypeConst is a key type by its name, with its number.
func keyTypeConst(kt uint64) *adminapi.CKConst {
	return &adminapi.CKConst{Name: ck.KeyTypeName(kt), Value: kt}
}

// mechanismConst is a mechanism by its name, with its number.
func mechanismConst(m uint64) adminapi.CKConst {
	return adminapi.CKConst{Name: ck.MechanismName(m), Value: m}
}

// keyTypeName names a key type for people.
func keyTypeName(kt uint64) string {
	switch kt {
	case ck.CKK_AES:
		return "AES"
	case ck.CKK_GENERIC_SECRET:
		return "generic-secret"
	case ck.CKK_RSA:
		return "RSA"
	case ck.CKK_EC:
		return "EC"
	case ck.CKK_EC_EDWARDS:
		return "EC-Edwards"
	case ck.CKK_ML_KEM:
		return "ML-KEM"
	case ck.CKK_ML_DSA:
		return "ML-DSA"
	case ck.CKK_SLH_DSA:
		return "SLH-DSA"
	}
	return fmt.Sprintf("0x%x", kt)
}

// publicKeyOf is a key's public half, for asymmetric keys.
func publicKeyOf(o *token.Object) (crypto.PublicKey, error) {
	if o.Class() == ck.CKO_SECRET_KEY {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "a %s key has no public half", keyTypeName(o.KeyType()))
	}
	return mech.PublicKey(o)
}

// publicKeyInfo is a key's public half as a DER SubjectPublicKeyInfo, for
// asymmetric keys (the post-quantum ones with the OIDs NIST assigned).
func publicKeyInfo(o *token.Object) ([]byte, error) {
	if o.Class() == ck.CKO_SECRET_KEY {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "a %s key has no public half", keyTypeName(o.KeyType()))
	}
	return mech.PublicKeyInfo(o)
}

// boolAttrs are the flags `key show` prints, by name.
var boolAttrs = []struct {
	t    uint64
	name string
}{
	{ck.CKA_TOKEN, "token"}, {ck.CKA_PRIVATE, "private"}, {ck.CKA_MODIFIABLE, "modifiable"},
	{ck.CKA_COPYABLE, "copyable"}, {ck.CKA_DESTROYABLE, "destroyable"},
	{ck.CKA_SENSITIVE, "sensitive"}, {ck.CKA_EXTRACTABLE, "extractable"},
	{ck.CKA_ALWAYS_SENSITIVE, "always_sensitive"}, {ck.CKA_NEVER_EXTRACTABLE, "never_extractable"},
	{ck.CKA_LOCAL, "local"}, {ck.CKA_TRUSTED, "trusted"}, {ck.CKA_WRAP_WITH_TRUSTED, "wrap_with_trusted"},
	{ck.CKA_ALWAYS_AUTHENTICATE, "always_authenticate"},
	{ck.CKA_ENCRYPT, "encrypt"}, {ck.CKA_DECRYPT, "decrypt"}, {ck.CKA_SIGN, "sign"}, {ck.CKA_VERIFY, "verify"},
	{ck.CKA_WRAP, "wrap"}, {ck.CKA_UNWRAP, "unwrap"}, {ck.CKA_DERIVE, "derive"},
	{ck.CKA_ENCAPSULATE, "encapsulate"}, {ck.CKA_DECAPSULATE, "decapsulate"},
}

// usageAttrs are the flags that say what a key may do.
var usageAttrs = []uint64{ck.CKA_ENCRYPT, ck.CKA_DECRYPT, ck.CKA_SIGN, ck.CKA_VERIFY, ck.CKA_WRAP, ck.CKA_UNWRAP, ck.CKA_DERIVE,
	ck.CKA_ENCAPSULATE, ck.CKA_DECAPSULATE}

// keyURI is the PKCS#11 URI (RFC 7512) that names a key object of the
// token, as OpenSSL, p11tool and ssh take it.
func keyURI(ti keystore.TokenInfo, class uint64, label string, id []byte) string {
	u := &p11uri.URI{}
	u.Set(p11uri.Token, ti.Label)
	if len(id) > 0 {
		u.Set(p11uri.ID, string(id))
	}
	if label != "" {
		u.Set(p11uri.Object, label)
	}
	if t := uriTypes[class]; t != "" {
		u.Set(p11uri.Type, t)
	}
	return u.String()
}

// uriTypes are the URI's names of the object classes.
var uriTypes = map[uint64]string{ck.CKO_PRIVATE_KEY: "private", ck.CKO_PUBLIC_KEY: "public", ck.CKO_SECRET_KEY: "secret-key",
	ck.CKO_CERTIFICATE: "cert", ck.CKO_DATA: "data"}

// selectorClasses are the classes a KeySelector's Class names.
var selectorClasses = map[string]uint64{"private-key": ck.CKO_PRIVATE_KEY, "public-key": ck.CKO_PUBLIC_KEY, "secret-key": ck.CKO_SECRET_KEY}

// classOf is the class a selector names, or false for any key class.
func classOf(ref adminapi.KeySelector) (uint64, bool, error) {
	if ref.Class == "" {
		return 0, false, nil
	}
	c, ok := selectorClasses[ref.Class]
	if !ok {
		return 0, false, adminapi.Errorf(adminapi.CodeBadRequest, "a key's class is private-key, public-key or secret-key, not %q", ref.Class)
	}
	return c, true, nil
}

// describe is the admin's view of a live key object of the token; full
// adds the attributes and the public key.
func describe(ti keystore.TokenInfo, f found, full bool) adminapi.Key {
	o := f.obj
	out := adminapi.Key{
		UUID: f.uuid.String(), Class: token.ClassName(o.Class()), KeyType: keyTypeConst(o.KeyType()),
		Private: o.Bool(ck.CKA_PRIVATE), Bits: mech.KeyBits(o),
	}
	if l, ok := o.Attr(ck.CKA_LABEL); ok {
		out.Label = string(l)
	}
	id, _ := o.Attr(ck.CKA_ID)
	if len(id) > 0 {
		out.ID = hex.EncodeToString(id)
	}
	out.URI = keyURI(ti, o.Class(), out.Label, id)
	if o.Class() != ck.CKO_PUBLIC_KEY {
		out.Protection = "software"
		if ulongOf(attrValue(o, ck.CKA_HSMEMU_PROTECTION)) == ck.CKP_HSMEMU_HSM {
			out.Protection = "hsm"
		}
	}
	for _, a := range boolAttrs {
		if !slices.Contains(usageAttrs, a.t) {
			continue
		}
		if o.Bool(a.t) {
			out.Usage = append(out.Usage, a.name)
		}
	}
	if name, pub, priv, sigOrCT, ok := mech.PQCSizes(o); ok {
		out.ParameterSet = name
		out.Sizes = &adminapi.KeySizes{PublicKey: pub, PrivateKey: priv}
		if o.KeyType() == ck.CKK_ML_KEM {
			out.Sizes.Ciphertext = sigOrCT
		} else {
			out.Sizes.Signature = sigOrCT
		}
	}
	if der, err := publicKeyInfo(o); err == nil {
		sum := sha256.Sum256(der)
		out.Fingerprint = "sha256:" + hex.EncodeToString(sum[:])
		if full {
			out.PublicPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		}
	}
	if full {
		out.Attributes = &adminapi.KeyAttributes{}
		for _, a := range boolAttrs {
			if v, ok := o.Attr(a.t); ok && len(v) == 1 {
				out.Attributes.SetFlag(a.name, v[0] != 0)
			}
		}
		if v, ok := o.Attr(ck.CKA_KEY_GEN_MECHANISM); ok && len(v) == 8 && ulongOf(v) != ck.CK_UNAVAILABLE_INFORMATION {
			m := mechanismConst(ulongOf(v))
			out.Attributes.KeyGenMechanism = &m
		}
		if v, ok := o.Attr(ck.CKA_ALLOWED_MECHANISMS); ok && len(v) > 0 {
			for i := 0; i+8 <= len(v); i += 8 {
				out.Attributes.AllowedMechanisms = append(out.Attributes.AllowedMechanisms, mechanismConst(ulongOf(v[i:i+8])))
			}
		}
	}
	return out
}

func describeDeleted(ti keystore.TokenInfo, d keystore.Deleted) adminapi.Key {
	out := adminapi.Key{UUID: d.UUID.String(), Class: token.ClassName(d.Class), Label: string(d.Label), ID: hex.EncodeToString(d.CKAID), Private: d.Private,
		URI: keyURI(ti, d.Class, string(d.Label), d.CKAID)}
	if d.KeyType != nil {
		out.KeyType = keyTypeConst(*d.KeyType)
	}
	at, after := d.DeletedAt, d.PurgeAfter
	out.DeletedAt, out.PurgeAfter = &at, &after
	return out
}

func (a *call) keyList(ctx context.Context, args adminapi.KeyList) ([]adminapi.Key, error) {
	out := []adminapi.Key{}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		if args.Deleted {
			del, err := a.store.DeletedObjects(ctx, ti.UUID)
			for _, d := range del {
				if isKeyClass(d.Class) {
					out = append(out, describeDeleted(ti, d))
				}
			}
			return err
		}
		keys, err := a.liveKeys(ctx, ti, adminapi.KeySelector{})
		for _, f := range keys {
			out = append(out, describe(ti, f, false))
		}
		return err
	})
	return out, err
}

func (a *call) keyShow(ctx context.Context, args adminapi.KeyRef) ([]adminapi.Key, error) {
	var out []adminapi.Key
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		sel, err := a.liveKey(ctx, ti, args.KeySelector)
		for _, f := range sel {
			out = append(out, describe(ti, f, true))
		}
		return err
	})
	return out, err
}

func (a *call) keyDelete(ctx context.Context, args adminapi.KeyRef) (*adminapi.KeyDeleted, error) {
	res := &adminapi.KeyDeleted{}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		sel, err := a.liveKey(ctx, ti, args.KeySelector)
		if err != nil {
			return err
		}
		for _, f := range sel {
			if !f.obj.Bool(ck.CKA_DESTROYABLE) {
				return adminapi.Errorf(adminapi.CodeRefused, "key %s is not destroyable (CKA_DESTROYABLE is false)", f.uuid)
			}
		}
		for _, f := range sel {
			kept, err := a.store.SoftDelete(ctx, f.id)
			if err != nil {
				return err
			}
			res.Kept = kept
			res.Keys = append(res.Keys, describe(ti, f, false))
			detail := token.ObjectDetail(f.uuid, f.obj.Class(), f.obj.All())
			detail["kept"] = fmt.Sprint(kept)
			a.eng.Audit(ctx, a.who, ti.UUID, "key.delete", detail)
		}
		if kept := ti.RetentionDays; res.Kept {
			res.PurgeAfter = time.Now().Add(time.Duration(kept) * 24 * time.Hour)
		}
		return nil
	})
	return res, err
}

// deletedKeys selects one key among a token's deleted keys.
func (a *call) deletedKeys(ctx context.Context, ti keystore.TokenInfo, ref adminapi.KeySelector) ([]keystore.Deleted, error) {
	sel, err := a.deletedMatches(ctx, ti, ref)
	if err != nil {
		return nil, err
	}
	if len(sel) == 0 {
		return nil, adminapi.Errorf(adminapi.CodeNotFound, "no deleted key matches %s (`hsmemu key list --deleted` lists them)", ref.String())
	}
	return one(sel, ref, func(d keystore.Deleted) uint64 { return d.Class }, pairOfDeleted, func(d keystore.Deleted) string {
		kt := "?"
		if d.KeyType != nil {
			kt = keyTypeName(*d.KeyType)
		}
		return fmt.Sprintf("%s %s %s", d.UUID, kt, token.ClassName(d.Class))
	}, func(d keystore.Deleted) string { return hex.EncodeToString(d.CKAID) })
}

// deletedMatches are the token's deleted key objects ref names.
func (a *call) deletedMatches(ctx context.Context, ti keystore.TokenInfo, ref adminapi.KeySelector) ([]keystore.Deleted, error) {
	class, hasClass, err := classOf(ref)
	if err != nil {
		return nil, err
	}
	del, err := a.store.DeletedObjects(ctx, ti.UUID)
	if err != nil {
		return nil, err
	}
	var sel []keystore.Deleted
	for _, d := range del {
		switch {
		case !isKeyClass(d.Class), hasClass && d.Class != class,
			ref.Key != "" && string(d.Label) != ref.Key,
			ref.ID != "" && hex.EncodeToString(d.CKAID) != ref.ID,
			ref.UUID != "" && d.UUID.String() != ref.UUID:
			continue
		}
		sel = append(sel, d)
	}
	return sel, nil
}

func (a *call) keyRecover(ctx context.Context, args adminapi.KeyRef) ([]adminapi.Key, error) {
	var out []adminapi.Key
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		sel, err := a.deletedKeys(ctx, ti, args.KeySelector)
		if err != nil {
			return err
		}
		for _, d := range sel {
			id, err := a.store.Recover(ctx, ti.UUID, d.UUID)
			if err != nil {
				return err
			}
			// Described as it now lives (bits, usage, protection), which
			// the deleted record does not hold.
			if k, err := a.openKey(ctx, id); err == nil {
				out = append(out, describe(ti, k, false))
			} else {
				out = append(out, describeDeleted(ti, d))
			}
			a.eng.Audit(ctx, a.who, ti.UUID, "key.recover", token.DeletedDetail(d))
		}
		return nil
	})
	for i := range out {
		out[i].DeletedAt, out[i].PurgeAfter = nil, nil
	}
	return out, err
}

// purgeGate opens a purge (event "key.purge" or "secret.purge") of a
// token's deleted objects (what: "keys", "secrets"): the SO PIN, checked
// as a login's, and no purge protection. A refusal is audited with
// detail.
func (a *call) purgeGate(ctx context.Context, token string, soPIN []byte, event, what string, detail map[string]string) (keystore.TokenInfo, error) {
	ti, err := a.lookup(ctx, token)
	if err != nil {
		return ti, err
	}
	err = a.soCheck(ctx, ti, event, func() error {
		return a.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, soPIN)
	})
	if err != nil {
		return ti, err
	}
	if ti.PurgeProtection {
		detail["why"] = "purge protection"
		a.eng.Audit(ctx, a.who, ti.UUID, event+".refused", detail)
		return ti, adminapi.Errorf(adminapi.CodeRefused, "token %q has purge protection: deleted %s are purged only when their %d days of retention end", ti.Label, what, ti.RetentionDays)
	}
	return ti, nil
}

// keyPurge removes deleted keys for good, with the SO PIN: it is the one
// key call that cannot be undone.
func (a *call) keyPurge(ctx context.Context, args adminapi.KeyPurge) ([]adminapi.Key, error) {
	ti, err := a.purgeGate(ctx, args.Token, args.SOPIN, "key.purge", "keys", map[string]string{})
	if err != nil {
		return nil, err
	}
	sel, err := a.deletedKeys(ctx, ti, args.KeySelector)
	if err != nil {
		return nil, err
	}
	var out []adminapi.Key
	for _, d := range sel {
		if err := a.store.Purge(ctx, ti.UUID, d.UUID); err != nil {
			return out, err
		}
		out = append(out, describeDeleted(ti, d))
		a.eng.Audit(ctx, a.who, ti.UUID, "key.purge", token.DeletedDetail(d))
	}
	return out, nil
}

func (a *call) keyExportPublic(ctx context.Context, args adminapi.KeyRef) (*adminapi.PublicKey, error) {
	var out *adminapi.PublicKey
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		sel, err := a.liveKey(ctx, ti, args.KeySelector)
		if err != nil {
			return err
		}
		der, err := publicKeyInfo(sel[0].obj)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(der)
		out = &adminapi.PublicKey{PEM: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), Fingerprint: "sha256:" + hex.EncodeToString(sum[:])}
		return nil
	})
	return out, err
}

func (a *call) tokenSet(ctx context.Context, args adminapi.TokenSet) (*adminapi.Token, error) {
	ti, err := a.lookup(ctx, args.Label)
	if err != nil {
		return nil, err
	}
	err = a.soCheck(ctx, ti, "token.set", func() error {
		if err := a.store.CheckPIN(ctx, ti.UUID, keystore.RoleSO, args.SOPIN); err != nil {
			return err
		}
		return a.store.SetPolicy(ctx, ti.UUID, args.RetentionDays, args.PurgeProtection)
	})
	var pe *keystore.PolicyError
	if errors.As(err, &pe) {
		return nil, adminapi.Errorf(adminapi.CodeRefused, "%s", pe.Reason)
	}
	if err != nil {
		return nil, err
	}
	if ti, err = a.store.Token(ctx, ti.UUID); err != nil {
		return nil, err
	}
	a.eng.Audit(ctx, a.who, ti.UUID, "token.set", map[string]string{"retention_days": fmt.Sprint(ti.RetentionDays), "purge_protection": fmt.Sprint(ti.PurgeProtection)})
	counts, err := a.store.ObjectCounts(ctx)
	if err != nil {
		return nil, err
	}
	t := a.token(ti, counts[ti.ID])
	return &t, nil
}

// keyBackup writes one key (a secret key, or a pair) into a backup blob
// only this security domain opens (keystore/keybackup.go).
func (a *call) keyBackup(ctx context.Context, args adminapi.KeyRef) (*adminapi.KeyBackup, error) {
	var out *adminapi.KeyBackup
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		sel, err := a.liveKey(ctx, ti, args.KeySelector)
		if err != nil {
			return err
		}
		var objs []keystore.BackupObject
		res := &adminapi.KeyBackup{}
		for _, f := range sel {
			stored, err := a.store.Open(ctx, f.id)
			if err != nil {
				return err
			}
			objs = append(objs, keystore.BackupObject{UUID: stored.UUID, Attrs: stored.Attrs, Secret: stored.Secret})
			res.Keys = append(res.Keys, describe(ti, f, false))
		}
		if res.Blob, err = a.store.SealKeyBackup(ctx, objs); err != nil {
			return err
		}
		for _, f := range sel {
			a.eng.Audit(ctx, a.who, ti.UUID, "key.backup", token.ObjectDetail(f.uuid, f.obj.Class(), f.obj.All()))
		}
		out = res
		return nil
	})
	return out, err
}

// keyRestore brings a key back from a backup blob of this domain, with
// the identity and attributes it had: an HSM-protected key stays so, and
// only a premium token takes one.
func (a *call) keyRestore(ctx context.Context, args adminapi.KeyRestore) ([]adminapi.Key, error) {
	var out []adminapi.Key
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		objs, err := a.store.OpenKeyBackup(ctx, args.Blob)
		var de *keystore.BackupDomainError
		switch {
		case errors.As(err, &de):
			a.eng.Audit(ctx, a.who, ti.UUID, "key.restore.refused", map[string]string{"why": "another security domain", "domain": hex.EncodeToString(de.Backup)})
			return adminapi.Errorf(adminapi.CodeRefused, "the backup is of security domain %x, this keystore's is %x: it restores only in its own domain", de.Backup[:8], de.Keystore[:8])
		case errors.Is(err, keystore.ErrNotKeyBackup):
			return adminapi.Errorf(adminapi.CodeBadRequest, "not a key backup of hsmemu, or altered")
		case err != nil:
			return err
		}
		defer func() {
			for _, o := range objs {
				clear(o.Secret)
			}
		}()
		for _, o := range objs {
			p, ok := o.Attrs.Get(ck.CKA_HSMEMU_PROTECTION)
			if ok && ulongOf(p) == ck.CKP_HSMEMU_HSM && ti.Tier != keystore.TierPremium {
				return adminapi.Errorf(adminapi.CodeRefused, "the backup holds an HSM-protected key, which only a premium token keeps; token %q is %s", ti.Label, ti.Tier)
			}
			if err := checkRestored(o); err != nil {
				a.eng.Audit(ctx, a.who, ti.UUID, "key.restore.refused", map[string]string{"why": "key material fails its checks", "object": o.UUID.String()})
				return err
			}
		}
		// All of the key or none of it: a pair is never left half restored.
		var made []*keystore.Object
		defer func() {
			if len(made) < len(objs) {
				for _, m := range made {
					a.store.Delete(ctx, m.ID)
				}
			}
		}()
		for _, o := range objs {
			// An AES key's IV counter is as old as the backup, and the
			// key may have handed out IVs since: it starts again at a
			// random point, as a key first used does (token/ivcounter.go).
			attrs := o.Attrs
			if _, ok := attrs.Get(ck.CKA_HSMEMU_IV_COUNTER); ok {
				attrs = slices.DeleteFunc(slices.Clone(attrs), func(at keystore.Attribute) bool { return at.Type == ck.CKA_HSMEMU_IV_COUNTER })
			}
			stored, err := a.store.PutAs(ctx, ti.UUID, o.UUID, attrs, o.Secret)
			if errors.Is(err, keystore.ErrObjectExists) {
				return adminapi.Errorf(adminapi.CodeExists, "key %s exists in this keystore (live or deleted): recover or purge it first", o.UUID)
			}
			if err != nil {
				return err
			}
			made = append(made, stored)
		}
		for _, stored := range made {
			v, err := token.View(stored)
			if err != nil {
				return err
			}
			out = append(out, describe(ti, found{id: stored.ID, uuid: stored.UUID, obj: v}, false))
			a.eng.Audit(ctx, a.who, ti.UUID, "key.restore", token.ObjectDetail(stored.UUID, v.Class(), v.All()))
		}
		return nil
	})
	return out, err
}

// attrValue is an attribute's value, or nil.
func attrValue(o *token.Object, t uint64) []byte {
	v, _ := o.Attr(t)
	return v
}

// ulongOf reads a CK_ULONG attribute value; anything but 8 bytes reads as
// all ones.
func ulongOf(v []byte) uint64 {
	if len(v) != 8 {
		return ^uint64(0)
	}
	return binary.BigEndian.Uint64(v)
}
