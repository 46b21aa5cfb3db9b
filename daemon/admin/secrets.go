package admin

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/token"
	"hsmemu/keystore"
)

// Secrets, as cloud key vaults keep them: named values with versions. Each
// version is a private token data object (docs/tokens.md, "Secrets"), so a
// PKCS#11 client logged in as the user reads them too; the admin calls add
// the versioning, the enabled flag and the expiry on top.

// secretVersion is one version as found in the token.
type secretVersion struct {
	id   keystore.ObjectID
	uuid keystore.UUID
	obj  *token.Object
}

func (v secretVersion) number() int64 {
	return int64(ulongOf(attrValue(v.obj, ck.CKA_HSMEMU_SECRET_VERSION)))
}

func (v secretVersion) info(name string) adminapi.SecretVersion {
	o := v.obj
	out := adminapi.SecretVersion{Name: name, Version: v.number(), UUID: v.uuid.String(),
		Enabled: o.Bool(ck.CKA_HSMEMU_SECRET_ENABLED), ContentType: string(attrValue(o, ck.CKA_HSMEMU_SECRET_CONTENT_TYPE))}
	if c := ulongOf(attrValue(o, ck.CKA_HSMEMU_SECRET_CREATED)); c > 0 {
		out.Created = time.Unix(int64(c), 0).UTC()
	}
	if e := ulongOf(attrValue(o, ck.CKA_HSMEMU_SECRET_EXPIRES)); e > 0 {
		t := time.Unix(int64(e), 0).UTC()
		out.Expires = &t
	}
	return out
}

// secretVersions returns a secret's live versions, oldest first; every
// secret's when name is "".
func (a *call) secretVersions(ctx context.Context, ti keystore.TokenInfo, name string) ([]secretVersion, error) {
	class := uint64(ck.CKO_DATA)
	f := keystore.Filter{Class: &class, IncludePrivate: true}
	if name != "" {
		f.Label = []byte(name)
	}
	ids, err := a.store.Find(ctx, ti.UUID, f)
	if err != nil {
		return nil, err
	}
	var out []secretVersion
	for _, id := range ids {
		stored, err := a.store.Open(ctx, id)
		if err != nil {
			continue // deleted meanwhile, or tampered (and recorded)
		}
		o, err := token.View(stored)
		if err != nil {
			continue
		}
		if string(attrValue(o, ck.CKA_APPLICATION)) != ck.SecretApplication {
			continue
		}
		out = append(out, secretVersion{id: id, uuid: stored.UUID, obj: o})
	}
	slices.SortFunc(out, func(x, y secretVersion) int {
		return cmp.Or(bytes.Compare(attrValue(x.obj, ck.CKA_LABEL), attrValue(y.obj, ck.CKA_LABEL)), cmp.Compare(x.number(), y.number()))
	})
	return out, nil
}

func noSecret(name string) error {
	return adminapi.Errorf(adminapi.CodeNotFound, "no secret is named %q (`hsmemu secret list` lists them)", name)
}

// liveSecret returns the versions of a secret that exists. A secret that
// is deleted is not "not found": it can be recovered, and the error says
// how.
func (a *call) liveSecret(ctx context.Context, ti keystore.TokenInfo, name string) ([]secretVersion, error) {
	vs, err := a.secretVersions(ctx, ti, name)
	if err == nil && len(vs) == 0 {
		if err = a.secretDeletedError(ctx, ti, name); err == nil {
			err = noSecret(name)
		}
	}
	return vs, err
}

// secretDeletedError is the error for a secret that is deleted, or nil
// when it is not.
func (a *call) secretDeletedError(ctx context.Context, ti keystore.TokenInfo, name string) error {
	del, err := a.store.DeletedObjects(ctx, ti.UUID)
	if err != nil {
		return err
	}
	for _, d := range del {
		if isDeletedSecret(d, name) {
			return adminapi.Errorf(adminapi.CodeDeleted, "secret %q was deleted on %s: `hsmemu secret recover --token %s --name %s` brings it back, until %s",
				name, d.DeletedAt.UTC().Format(time.RFC3339), shellQuote(ti.Label), shellQuote(name), d.PurgeAfter.UTC().Format(time.RFC3339))
		}
	}
	return nil
}

func checkSecretName(name string) error {
	if name == "" || len(name) > 127 {
		return adminapi.Errorf(adminapi.CodeBadRequest, "a secret's name is 1 to 127 bytes, not %d", len(name))
	}
	return nil
}

func (a *call) secretSet(ctx context.Context, args adminapi.SecretSet) (*adminapi.SecretVersion, error) {
	if err := checkSecretName(args.Name); err != nil {
		return nil, err
	}
	if len(args.Value) > adminapi.MaxSecretSize {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "a secret's value is at most %d bytes, not %d", adminapi.MaxSecretSize, len(args.Value))
	}
	if args.Expires < 0 || args.Expires > 0 && args.Expires <= time.Now().Unix() {
		return nil, adminapi.Errorf(adminapi.CodeBadRequest, "the expiry must be in the future")
	}
	var out *adminapi.SecretVersion
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, u *token.UserSession) error {
		// One writer of versions at a time, so two sets never make the
		// same version number.
		a.h.secretMu.Lock()
		defer a.h.secretMu.Unlock()
		vs, err := a.secretVersions(ctx, ti, args.Name)
		if err != nil {
			return err
		}
		next := int64(1)
		if len(vs) > 0 {
			next = vs[len(vs)-1].number() + 1
		}
		// Deleted versions keep their numbers: a new version never reuses
		// one that `secret recover` could bring back.
		del, err := a.store.DeletedObjects(ctx, ti.UUID)
		if err != nil {
			return err
		}
		for _, d := range del {
			if isDeletedSecret(d, args.Name) {
				return adminapi.Errorf(adminapi.CodeDeleted, "secret %q is deleted: recover it (`hsmemu secret recover --token %s --name %s`) or purge it before setting it again",
					args.Name, shellQuote(ti.Label), shellQuote(args.Name))
			}
		}
		enabled := keystore.Bool(true)
		if args.Disabled {
			enabled = keystore.Bool(false)
		}
		tmpl := []keystore.Attribute{
			{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_DATA)},
			{Type: ck.CKA_TOKEN, Value: keystore.Bool(true)},
			{Type: ck.CKA_PRIVATE, Value: keystore.Bool(true)},
			{Type: ck.CKA_LABEL, Value: []byte(args.Name)},
			{Type: ck.CKA_APPLICATION, Value: []byte(ck.SecretApplication)},
			{Type: ck.CKA_VALUE, Value: args.Value},
			{Type: ck.CKA_HSMEMU_SECRET_VERSION, Value: keystore.Ulong(uint64(next))},
			{Type: ck.CKA_HSMEMU_SECRET_ENABLED, Value: enabled},
			{Type: ck.CKA_HSMEMU_SECRET_EXPIRES, Value: keystore.Ulong(uint64(args.Expires))},
			{Type: ck.CKA_HSMEMU_SECRET_CONTENT_TYPE, Value: []byte(args.ContentType)},
			{Type: ck.CKA_HSMEMU_SECRET_CREATED, Value: keystore.Ulong(uint64(time.Now().Unix()))},
		}
		oh, err := u.CreateObject(ctx, tmpl)
		if err != nil {
			return err
		}
		stored, err := u.Stored(ctx, oh)
		if err != nil {
			return err
		}
		o, err := token.View(stored)
		if err != nil {
			return err
		}
		v := secretVersion{id: stored.ID, uuid: stored.UUID, obj: o}.info(args.Name)
		out = &v
		a.eng.Audit(ctx, a.who, ti.UUID, "secret.set", map[string]string{"name": args.Name, "version": fmt.Sprint(next), "object": stored.UUID.String()})
		return nil
	})
	return out, err
}

// pick finds a version: the given number, or the newest.
func pick(vs []secretVersion, name string, version int64) (secretVersion, error) {
	if len(vs) == 0 {
		return secretVersion{}, noSecret(name)
	}
	if version == 0 {
		return vs[len(vs)-1], nil
	}
	for _, v := range vs {
		if v.number() == version {
			return v, nil
		}
	}
	return secretVersion{}, adminapi.Errorf(adminapi.CodeNotFound, "secret %q has no version %d (`hsmemu secret versions` lists them)", name, version)
}

func (a *call) secretGet(ctx context.Context, args adminapi.SecretGet) (*adminapi.SecretValue, error) {
	var out *adminapi.SecretValue
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		vs, err := a.liveSecret(ctx, ti, args.Name)
		if err != nil {
			return err
		}
		v, err := pick(vs, args.Name, args.Version)
		if err != nil {
			return err
		}
		info := v.info(args.Name)
		detail := map[string]string{"name": args.Name, "version": fmt.Sprint(info.Version)}
		switch {
		case !info.Enabled:
			detail["refused"] = "disabled"
			a.eng.Audit(ctx, a.who, ti.UUID, "secret.get.refused", detail)
			return adminapi.Errorf(adminapi.CodeRefused, "version %d of secret %q is disabled", info.Version, args.Name)
		case info.Expires != nil && !info.Expires.After(time.Now()):
			detail["refused"] = "expired"
			a.eng.Audit(ctx, a.who, ti.UUID, "secret.get.refused", detail)
			return adminapi.Errorf(adminapi.CodeRefused, "version %d of secret %q expired at %s", info.Version, args.Name, info.Expires.Format(time.RFC3339))
		}
		value, _ := v.obj.Attr(ck.CKA_VALUE)
		out = &adminapi.SecretValue{SecretVersion: info, Value: bytes.Clone(value)}
		a.eng.Audit(ctx, a.who, ti.UUID, "secret.get", detail)
		return nil
	})
	return out, err
}

func (a *call) secretList(ctx context.Context, args adminapi.SecretList) ([]adminapi.Secret, error) {
	out := []adminapi.Secret{}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		if args.Deleted {
			del, err := a.store.DeletedObjects(ctx, ti.UUID)
			if err != nil {
				return err
			}
			byName := map[string]*adminapi.Secret{}
			var names []string
			for _, d := range del {
				if !isDeletedSecret(d, "") {
					continue
				}
				n := string(d.Label)
				s, ok := byName[n]
				if !ok {
					at, after := d.DeletedAt, d.PurgeAfter
					s = &adminapi.Secret{Name: n, DeletedAt: &at, PurgeAfter: &after}
					byName[n] = s
					names = append(names, n)
				}
				s.Versions++
			}
			for _, n := range names {
				out = append(out, *byName[n])
			}
			return nil
		}
		vs, err := a.secretVersions(ctx, ti, "")
		if err != nil {
			return err
		}
		for i, v := range vs {
			name := string(attrValue(v.obj, ck.CKA_LABEL))
			if i+1 < len(vs) && string(attrValue(vs[i+1].obj, ck.CKA_LABEL)) == name {
				continue // not the newest
			}
			n := 0
			for _, w := range vs {
				if string(attrValue(w.obj, ck.CKA_LABEL)) == name {
					n++
				}
			}
			cur := v.info(name)
			out = append(out, adminapi.Secret{Name: name, Current: &cur, Versions: n})
		}
		return nil
	})
	return out, err
}

func (a *call) secretVersionsOp(ctx context.Context, args adminapi.SecretRef) ([]adminapi.SecretVersion, error) {
	var out []adminapi.SecretVersion
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		vs, err := a.liveSecret(ctx, ti, args.Name)
		if err != nil {
			return err
		}
		for _, v := range vs {
			out = append(out, v.info(args.Name))
		}
		return nil
	})
	return out, err
}

func (a *call) secretDelete(ctx context.Context, args adminapi.SecretRef) (*adminapi.SecretDeleted, error) {
	res := &adminapi.SecretDeleted{Name: args.Name}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		a.h.secretMu.Lock()
		defer a.h.secretMu.Unlock()
		vs, err := a.liveSecret(ctx, ti, args.Name)
		if err != nil {
			return err
		}
		for _, v := range vs {
			kept, err := a.store.SoftDelete(ctx, v.id)
			if err != nil {
				return err
			}
			res.Versions++
			res.Kept = kept
		}
		if res.Kept {
			res.PurgeAfter = time.Now().Add(time.Duration(ti.RetentionDays) * 24 * time.Hour)
		}
		a.eng.Audit(ctx, a.who, ti.UUID, "secret.delete", map[string]string{"name": args.Name, "versions": fmt.Sprint(res.Versions), "kept": fmt.Sprint(res.Kept)})
		return nil
	})
	return res, err
}

// isDeletedSecret reports whether a deleted object is a version of the
// named secret (of any secret, for ""): a data object of the secrets'
// application, not another data object that shares the label.
func isDeletedSecret(d keystore.Deleted, name string) bool {
	app, _ := d.Attrs.Get(ck.CKA_APPLICATION)
	return d.Class == ck.CKO_DATA && string(app) == ck.SecretApplication && (name == "" || string(d.Label) == name)
}

// deletedSecret returns the deleted versions of a secret.
func (a *call) deletedSecret(ctx context.Context, ti keystore.TokenInfo, name string) ([]keystore.Deleted, error) {
	del, err := a.store.DeletedObjects(ctx, ti.UUID)
	if err != nil {
		return nil, err
	}
	var out []keystore.Deleted
	for _, d := range del {
		if isDeletedSecret(d, name) {
			out = append(out, d)
		}
	}
	if len(out) == 0 {
		return nil, adminapi.Errorf(adminapi.CodeNotFound, "no deleted secret is named %q (`hsmemu secret list --deleted` lists them)", name)
	}
	return out, nil
}

func (a *call) secretRecover(ctx context.Context, args adminapi.SecretRef) (*adminapi.SecretDeleted, error) {
	res := &adminapi.SecretDeleted{Name: args.Name}
	err := a.asUser(ctx, args.Token, args.UserPIN, func(ti keystore.TokenInfo, _ *token.UserSession) error {
		a.h.secretMu.Lock()
		defer a.h.secretMu.Unlock()
		del, err := a.deletedSecret(ctx, ti, args.Name)
		if err != nil {
			return err
		}
		if vs, err := a.secretVersions(ctx, ti, args.Name); err != nil || len(vs) > 0 {
			if err == nil {
				err = adminapi.Errorf(adminapi.CodeExists, "a live secret is named %q: delete it first", args.Name)
			}
			return err
		}
		for _, d := range del {
			if _, err := a.store.Recover(ctx, ti.UUID, d.UUID); err != nil {
				return err
			}
			res.Versions++
		}
		a.eng.Audit(ctx, a.who, ti.UUID, "secret.recover", map[string]string{"name": args.Name, "versions": fmt.Sprint(res.Versions)})
		return nil
	})
	return res, err
}

func (a *call) secretPurge(ctx context.Context, args adminapi.SecretPurge) (*adminapi.SecretDeleted, error) {
	ti, err := a.purgeGate(ctx, args.Token, args.SOPIN, "secret.purge", "secrets", map[string]string{"name": args.Name})
	if err != nil {
		return nil, err
	}
	del, err := a.deletedSecret(ctx, ti, args.Name)
	if err != nil {
		return nil, err
	}
	res := &adminapi.SecretDeleted{Name: args.Name}
	for _, d := range del {
		if err := a.store.Purge(ctx, ti.UUID, d.UUID); err != nil {
			return nil, err
		}
		res.Versions++
	}
	a.eng.Audit(ctx, a.who, ti.UUID, "secret.purge", map[string]string{"name": args.Name, "versions": fmt.Sprint(res.Versions)})
	return res, nil
}
