package token

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/keystore"
)

// Objects. Token objects live in the keystore, their key material sealed;
// session objects live here, with the application, until the session that
// created them closes. Handles are per application: a handle means nothing
// to another process.

// maxRandom bounds one C_GenerateRandom.
const maxRandom = 1 << 20

// userIn reports whether app's user is logged in on s's token: only then
// are private objects visible.
func (app *App) userIn(s *session) bool {
	r, in := app.role(s)
	return in && r == keystore.RoleUser
}

// tokenHandle returns app's handle for a token object, the same one each
// time until the login ends if the object is private. App.mu is held.
func (app *App) tokenHandle(token keystore.UUID, id keystore.ObjectID, private bool) uint64 {
	if h, ok := app.byObject[id]; ok {
		return h
	}
	app.nextHandle++
	h := app.nextHandle
	app.handles[h] = &handle{token: token, id: id, private: private}
	app.byObject[id] = h
	return h
}

// memHandle returns a new handle for a session object. App.mu is held.
func (app *App) memHandle(token keystore.UUID, mem *sessionObject) uint64 {
	app.nextHandle++
	h := app.nextHandle
	ref := &handle{token: token, mem: mem}
	app.handles[h] = ref
	app.memHandles[h] = ref
	return h
}

// dropHandle forgets a handle. App.mu is held.
func (app *App) dropHandle(h uint64) {
	if ref, ok := app.handles[h]; ok {
		delete(app.handles, h)
		if ref.mem == nil {
			delete(app.byObject, ref.id)
		} else {
			delete(app.memHandles, h)
			ref.mem.uncharge()
		}
	}
}

// View turns a keystore object into the engine's view.
func View(obj *keystore.Object) (*Object, error) {
	// The view is kept with the stored object, so a cached key is parsed
	// once, not on every use.
	if v, ok := obj.Memo.Load().(*Object); ok {
		return v, nil
	}
	var sec keystore.Attributes
	if len(obj.Secret) > 0 {
		var err error
		if sec, err = keystore.DecodeAttributes(obj.Secret); err != nil {
			return nil, keystore.ErrTampered
		}
	}
	o := viewOf(obj.Attrs, sec)
	// A token object's CKA_UNIQUE_ID is its uuid in the keystore, the one
	// the audit log names it by: shown, never stored.
	o.uniqueID = []byte(obj.UUID.String())
	obj.Memo.Store(o)
	return o, nil
}

// sessionUniqueID makes a session object's CKA_UNIQUE_ID: random, as a
// keystore uuid is, in the same form, so that it is unique among all the
// objects a session sees (PKCS#11 v3.0, "The CKA_UNIQUE_ID attribute").
func sessionUniqueID() ([]byte, error) {
	var u keystore.UUID
	if _, err := rand.Read(u[:]); err != nil {
		return nil, err
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return []byte(u.String()), nil
}

// resolve finds the object behind handle oh for a call on session s: it
// must be app's, on s's token, and visible to app's login state.
func (e *Engine) resolve(ctx context.Context, app *App, s *session, oh uint64) (*handle, *Object, error) {
	app.mu.Lock()
	ref, ok := app.handles[oh]
	app.mu.Unlock()
	if !ok || ref.token != s.token {
		return nil, nil, ck.Error(ck.CKR_OBJECT_HANDLE_INVALID)
	}
	user := app.userIn(s)
	if ref.mem != nil {
		if ref.mem.private && !user {
			return nil, nil, ck.Error(ck.CKR_OBJECT_HANDLE_INVALID)
		}
		app.mu.Lock()
		o := ref.mem.obj
		app.mu.Unlock()
		return ref, o, nil
	}
	obj, err := e.store.Open(ctx, ref.id)
	if errors.Is(err, keystore.ErrNotFound) || errors.Is(err, keystore.ErrNotLoggedIn) {
		return nil, nil, ck.Error(ck.CKR_OBJECT_HANDLE_INVALID)
	}
	if err != nil {
		return nil, nil, err
	}
	if obj.Private && !user {
		// The token's data key may be open for another application.
		return nil, nil, ck.Error(ck.CKR_OBJECT_HANDLE_INVALID)
	}
	o, err := View(obj)
	return ref, o, err
}

// keep creates an object from its full attribute set, in the keystore or
// in memory as CKA_TOKEN says, and returns its new handle. verb says how
// it came to be (generate, import, unwrap, derive, copy), for the audit
// log, which records token objects.
func (e *Engine) keep(ctx context.Context, app *App, s *session, verb string, m map[uint64][]byte, class, kt uint64) (uint64, error) {
	token, private := isTrue(m[ck.CKA_TOKEN]), isTrue(m[ck.CKA_PRIVATE])
	if token && !s.rw {
		return 0, ck.Error(ck.CKR_SESSION_READ_ONLY)
	}
	if private && !app.userIn(s) {
		return 0, ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
	}
	// Every new object gets a CKA_UNIQUE_ID of its own, a copy too: a
	// token object its uuid (View), a session object a random one, kept
	// with its attributes.
	delete(m, ck.CKA_UNIQUE_ID)
	if !token {
		u, err := sessionUniqueID()
		if err != nil {
			return 0, err
		}
		m[ck.CKA_UNIQUE_ID] = u
	}
	o, err := split(m, class, kt)
	if err != nil {
		return 0, err
	}
	if !token {
		app.mu.Lock()
		defer app.mu.Unlock()
		if _, ok := app.sessions[s.handle]; !ok {
			return 0, ck.Error(ck.CKR_SESSION_CLOSED)
		}
		so := &sessionObject{obj: o, owner: s.handle, private: private}
		if err := so.charge(e.sessCharge(app), objectCost(o)); err != nil {
			return 0, err
		}
		return app.memHandle(s.token, so), nil
	}
	var secret []byte
	if len(o.secret) > 0 {
		secret = o.secret.Encode()
	}
	if verb == "import" && class != ck.CKO_SECRET_KEY && class != ck.CKO_PRIVATE_KEY && class != ck.CKO_PUBLIC_KEY {
		verb = "create"
	}
	who := e.tokenActor(ctx, actor(app, sessionRole(app, s)), s.token)
	ctx, id := withRequestID(ctx)
	obj, err := e.store.PutAudited(ctx, s.token, o.attrs, secret, func(u keystore.UUID) keystore.AuditNote {
		return keystore.AuditNote{Actor: who, Event: ObjectEvent(class, verb), Detail: ObjectDetail(u, class, m)}
	})
	if err != nil {
		return 0, err
	}
	e.logAudited(ObjectEvent(class, verb), id, who)
	app.mu.Lock()
	defer app.mu.Unlock()
	return app.tokenHandle(s.token, obj.ID, private), nil
}

// createObject creates an object from a template.
func (e *Engine) createObject(ctx context.Context, app *App, h uint64, tmpl []attr) (uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, err
	}
	tier, err := e.tierOf(ctx, s)
	if err != nil {
		return 0, err
	}
	m, class, kt, err := checkCreate(tmpl, app.isSO(s), tier)
	if err != nil {
		return 0, err
	}
	return e.keep(ctx, app, s, "import", m, class, kt)
}

// copyObject copies an object, changing what the template says, within the
// rules: nothing loosens (sensitive stays sensitive, unextractable stays
// unextractable, a private key stays private).
func (e *Engine) copyObject(ctx context.Context, app *App, h, oh uint64, tmpl []attr) (uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, err
	}
	ref, o, err := e.resolve(ctx, app, s, oh)
	if err != nil {
		return 0, err
	}
	m, err := checkChange(o, tmpl, app.isSO(s), true)
	if err != nil {
		return 0, err
	}
	if hasIVCounter(o) {
		// The copy takes half of what is left of the key's IV counter,
		// so the two never make the same IV (ivcounter.go). keep's own
		// checks first: a refused copy should not cost the key half its
		// range.
		if isTrue(m[ck.CKA_TOKEN]) && !s.rw {
			return 0, ck.Error(ck.CKR_SESSION_READ_ONLY)
		}
		if isTrue(m[ck.CKA_PRIVATE]) && !app.userIn(s) {
			return 0, ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
		}
		c, err := e.ivCounterOf(ctx, app, ref, o)
		if err != nil {
			return 0, err
		}
		if m[ck.CKA_HSMEMU_IV_COUNTER], err = c.split(ctx); err != nil {
			return 0, err
		}
	}
	return e.keep(ctx, app, s, "copy", m, o.Class(), o.KeyType())
}

// destroyObject destroys an object.
func (e *Engine) destroyObject(ctx context.Context, app *App, h, oh uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	ref, o, err := e.resolve(ctx, app, s, oh)
	if err != nil {
		return err
	}
	if !o.Bool(ck.CKA_DESTROYABLE) {
		return ck.Error(ck.CKR_ACTION_PROHIBITED)
	}
	if ref.mem == nil {
		if !s.rw {
			return ck.Error(ck.CKR_SESSION_READ_ONLY)
		}
		var uuid keystore.UUID
		if stored, err := e.store.Open(ctx, ref.id); err == nil {
			uuid = stored.UUID
		}
		// A token object is kept, recoverable by the administrator, for
		// its token's retention period (docs/tokens.md, "Deleting").
		who := e.tokenActor(ctx, actor(app, sessionRole(app, s)), s.token)
		ctx, id := withRequestID(ctx)
		_, err := e.store.SoftDeleteAudited(ctx, ref.id, func(kept bool) keystore.AuditNote {
			detail := ObjectDetail(uuid, o.Class(), o.All())
			detail["kept"] = fmt.Sprint(kept)
			return keystore.AuditNote{Actor: who, Event: ObjectEvent(o.Class(), "destroy"), Detail: detail}
		})
		// Gone already (deleted by the administrator meanwhile): nothing
		// was done, so nothing is recorded, and the handle goes.
		if err != nil && !errors.Is(err, keystore.ErrNotFound) {
			return err
		}
		if err == nil {
			e.logAudited(ObjectEvent(o.Class(), "destroy"), id, who)
		}
	}
	app.mu.Lock()
	app.dropHandle(oh)
	app.mu.Unlock()
	return nil
}

// objectSize is the size the object takes in the keystore.
func (e *Engine) objectSize(ctx context.Context, app *App, h, oh uint64) (uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return 0, err
	}
	_, o, err := e.resolve(ctx, app, s, oh)
	if err != nil {
		return 0, err
	}
	return uint64(len(o.attrs.Encode()) + len(o.secret.Encode())), nil
}

// getAttributes answers C_GetAttributeValue: every attribute gets its own
// outcome, and the call's CK_RV is the worst of them. The answers are
// returned with CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID and
// CKR_BUFFER_TOO_SMALL too, as the specification asks.
func (e *Engine) getAttributes(ctx context.Context, app *App, h, oh uint64, qs []wire.Query) ([]wire.Answer, error) {
	s, err := app.session(h)
	if err != nil {
		return nil, err
	}
	_, o, err := e.resolve(ctx, app, s, oh)
	if err != nil {
		return nil, err
	}
	answers := make([]wire.Answer, len(qs))
	var sensitive, invalid, small bool
	for i, q := range qs {
		v, code := o.readAttr(q.Type)
		if code == ck.CKR_OK {
			if r, _ := ruleFor(q.Type, o.Class(), o.KeyType()); r.kind == vAttrs {
				// A template attribute's length is its number of
				// attributes, and its value travels as a template.
				answers[i], small = templateAnswer(q, v, small)
				continue
			}
		}
		switch {
		case code == ck.CKR_ATTRIBUTE_SENSITIVE:
			sensitive = true
			answers[i].Length = ck.CK_UNAVAILABLE_INFORMATION
		case code != ck.CKR_OK:
			invalid = true
			answers[i].Length = ck.CK_UNAVAILABLE_INFORMATION
		case !q.Present:
			answers[i].Length = uint64(len(v))
		case q.Capacity < uint64(len(v)):
			small = true
			answers[i].Length = ck.CK_UNAVAILABLE_INFORMATION
		default:
			answers[i].Length = uint64(len(v))
			if v == nil {
				v = vEmpty
			}
			answers[i].Value = v
		}
	}
	switch {
	case sensitive:
		return answers, ck.Error(ck.CKR_ATTRIBUTE_SENSITIVE)
	case invalid:
		return answers, ck.Error(ck.CKR_ATTRIBUTE_TYPE_INVALID)
	case small:
		return answers, ck.Error(ck.CKR_BUFFER_TOO_SMALL)
	}
	return answers, nil
}

// templateAnswer answers a query for a template attribute stored as a
// canonical attribute encoding.
func templateAnswer(q wire.Query, stored []byte, small bool) (wire.Answer, bool) {
	attrs, err := keystore.DecodeAttributes(stored)
	if err != nil {
		attrs = nil
	}
	n := uint64(len(attrs))
	switch {
	case !q.Present:
		return wire.Answer{Length: n}, small
	case q.Capacity < n:
		return wire.Answer{Length: ck.CK_UNAVAILABLE_INFORMATION}, true
	}
	nested := make([]wire.Attribute, len(attrs))
	for i, a := range attrs {
		nested[i] = wire.Attribute{Type: a.Type, Value: nonNil(a.Value)}
	}
	v, err := wire.EncodeTemplate(nested)
	if err != nil {
		return wire.Answer{Length: ck.CK_UNAVAILABLE_INFORMATION}, true
	}
	return wire.Answer{Length: n, Value: v}, small
}

// setAttributes changes attributes of an object, within the rules.
func (e *Engine) setAttributes(ctx context.Context, app *App, h, oh uint64, tmpl []attr) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	ref, o, err := e.resolve(ctx, app, s, oh)
	if err != nil {
		return err
	}
	if ref.mem == nil && !s.rw {
		return ck.Error(ck.CKR_SESSION_READ_ONLY)
	}
	// The template applies to the object as it is when the change is
	// written, not as resolve read it: a change made meanwhile, by
	// another thread or another application (a key made sensitive, say),
	// stays, and the one-way rules hold against it.
	so := app.isSO(s)
	if ref.mem != nil {
		app.mu.Lock()
		defer app.mu.Unlock()
		if _, ok := app.handles[oh]; !ok {
			// Destroyed meanwhile, and its charge given back.
			return ck.Error(ck.CKR_OBJECT_HANDLE_INVALID)
		}
		cur := ref.mem.obj
		m, err := checkChange(cur, tmpl, so, false)
		if err != nil {
			return err
		}
		n, err := split(m, cur.Class(), cur.KeyType())
		if err != nil {
			return err
		}
		if err := ref.mem.recharge(n); err != nil {
			return err
		}
		ref.mem.obj = n
		return nil
	}
	// A token object's row is read and written in one transaction, under
	// its lock (UpdateLocked): the IV counter's state, written apart
	// (ivcounter.go) by this daemon and others, is kept as the row holds
	// it too.
	var m map[uint64][]byte
	err = e.store.UpdateLocked(ctx, ref.id, func(stored *keystore.Object) (keystore.Attributes, []byte, error) {
		cur, err := View(stored)
		if err != nil {
			return nil, nil, err
		}
		if m, err = checkChange(cur, tmpl, so, false); err != nil {
			return nil, nil, err
		}
		n, err := split(m, cur.Class(), cur.KeyType())
		if err != nil {
			return nil, nil, err
		}
		var secret []byte
		if len(n.secret) > 0 {
			secret = n.secret.Encode()
		}
		return n.attrs, secret, nil
	})
	if err != nil {
		return err
	}
	// A token object's change is recorded (a key's usage widened, its
	// label or id changed): the attributes by type, never a value.
	var uuid keystore.UUID
	if stored, err := e.store.Open(ctx, ref.id); err == nil {
		uuid = stored.UUID
	}
	detail := ObjectDetail(uuid, o.Class(), m)
	detail["attributes"] = attrTypes(tmpl)
	e.audit(ctx, actor(app, sessionRole(app, s)), s.token, ObjectEvent(o.Class(), "modify"), detail)
	return nil
}

// attrTypes lists a template's attribute types, in hex, sorted, once each.
func attrTypes(tmpl []attr) string {
	types := make([]uint64, 0, len(tmpl))
	for _, a := range tmpl {
		types = append(types, a.Type)
	}
	slices.Sort(types)
	types = slices.Compact(types)
	out := make([]string, len(types))
	for i, t := range types {
		out[i] = fmt.Sprintf("0x%x", t)
	}
	return strings.Join(out, ",")
}

// findOp is a search in progress: its results are fixed when it starts.
type findOp struct {
	handles []uint64
	charged int64 // to the session budget (sessmem.go)
}

// findObjectsInit starts a search: the keystore narrows it on its indexed
// attributes, and every candidate is matched against the whole template.
func (e *Engine) findObjectsInit(ctx context.Context, app *App, h uint64, tmpl []attr) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	// The session's lock is not held while the search runs: it would
	// come before App.mu, which the search takes.
	s.mu.Lock()
	active := s.find != nil
	s.mu.Unlock()
	if active {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	user := app.userIn(s)
	f := keystore.Filter{IncludePrivate: user}
	for _, a := range tmpl {
		switch a.Type {
		case ck.CKA_CLASS, ck.CKA_KEY_TYPE:
			if len(a.Value) != 8 {
				return s.startFind(&findOp{}) // matches nothing
			}
			v := ulongOf(a.Value)
			if a.Type == ck.CKA_CLASS {
				f.Class = &v
			} else {
				f.KeyType = &v
			}
		case ck.CKA_LABEL:
			f.Label = nonNil(a.Value)
		case ck.CKA_ID:
			f.ID = nonNil(a.Value)
		}
	}
	ids, err := e.store.Find(ctx, s.token, f)
	if err != nil {
		return err
	}
	op := &findOp{}
	for _, id := range ids {
		obj, err := e.store.Open(ctx, id)
		if errors.Is(err, keystore.ErrNotFound) || errors.Is(err, keystore.ErrNotLoggedIn) {
			continue // deleted meanwhile, or not this application's to see
		}
		if errors.Is(err, keystore.ErrTampered) {
			// An edited object is unusable, and says so, loudly; the
			// token's other objects stay usable.
			e.log.Error("a stored object failed authentication and is left out", "token", s.token.String(), "object", int64(id))
			continue
		}
		if err != nil {
			return err
		}
		if obj.Private && !user {
			continue
		}
		o, err := View(obj)
		if err != nil {
			// Its sealed part does not decode (ErrTampered): left out
			// as an edited row is, the token's other objects found.
			e.log.Error("a stored object does not decode and is left out", "token", s.token.String(), "object", int64(id))
			continue
		}
		if o.matches(tmpl) {
			app.mu.Lock()
			op.handles = append(op.handles, app.tokenHandle(s.token, id, obj.Private))
			app.mu.Unlock()
		}
	}
	app.mu.Lock()
	for oh, ref := range app.memHandles {
		if ref.token == s.token && (user || !ref.mem.private) && ref.mem.obj.matches(tmpl) {
			op.handles = append(op.handles, oh)
		}
	}
	app.mu.Unlock()
	return s.startFind(op)
}

// startFind makes op the session's search, unless one started meanwhile.
func (s *session) startFind(op *findOp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.find != nil {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	return s.setFind(op)
}

func nonNil(b []byte) []byte {
	if b == nil {
		return vEmpty
	}
	return b
}

// findObjects returns up to max more results.
func (e *Engine) findObjects(ctx context.Context, app *App, h, max uint64) ([]uint64, error) {
	s, err := app.session(h)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.find == nil {
		return nil, ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	n := min(uint64(len(s.find.handles)), max, wire.MaxUlongs)
	out := s.find.handles[:n:n]
	s.find.handles = s.find.handles[n:]
	return out, nil
}

// findObjectsFinal ends a search.
func (e *Engine) findObjectsFinal(ctx context.Context, app *App, h uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.find == nil {
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	s.endFind()
	return nil
}

// generateRandom returns n random bytes from the operating system's CSPRNG.
func (e *Engine) generateRandom(ctx context.Context, app *App, h, n uint64) ([]byte, error) {
	if _, err := app.session(h); err != nil {
		return nil, err
	}
	if n > maxRandom {
		return nil, ck.Error(ck.CKR_ARGUMENTS_BAD)
	}
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// SeedRandom: the token's generator is the operating system's, which takes
// no seed from a client.
func (e *Engine) seedRandom(ctx context.Context, app *App, h uint64) error {
	if _, err := app.session(h); err != nil {
		return err
	}
	return ck.Error(ck.CKR_RANDOM_SEED_NOT_SUPPORTED)
}
