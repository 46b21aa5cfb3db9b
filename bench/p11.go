package bench

/*
#cgo CFLAGS: -I${SRCDIR}/../cryptoki/module
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <stdlib.h>
#include "p11.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"hsmemu/cryptoki/ck"
)

// overSocket says the module was told to reach its daemon over the
// socket rather than the rings: by its spec, or by HSMEMU_TRANSPORT.
func (m *module) overSocket() bool {
	if m.transport != "" {
		return m.transport == "socket"
	}
	return os.Getenv("HSMEMU_TRANSPORT") == "socket"
}

// module is one PKCS#11 module loaded into this process.
type module struct {
	path string
	// remote: the module reaches its daemon over TLS (a PATH@tls://
	// spec), so its floor is the TLS round trip.
	remote bool
	// transport: "ring" or "socket" when the spec chose one
	// (PATH@ring:SOCKET, PATH@socket:SOCKET), else "".
	transport string
	name      string
	m         C.bm_module
	slot      C.CK_SLOT_ID
}

// is reports whether err is the return code rv.
func is(err error, rv uint) bool { return errors.Is(err, ck.Error(rv)) }

// ok is a module's return code as an error: nil for CKR_OK.
func ok(rv C.CK_RV) error { return ck.Err(uint64(rv)) }

// loadModule loads and initialises a module. The spec is its path,
// optionally followed by "@SOCKET": the daemon socket an hsmemu module is
// to use, set as HSMEMU_SOCKET while it initialises (where it reads it),
// so two daemons can be measured side by side in one run.
//
// "@tls://HOST:PORT" (a list, comma-separated) points it at remote
// daemons instead: it is set as HSMEMU_SERVER, and the client certificate
// comes from HSMEMU_TLS_CERT, HSMEMU_TLS_KEY and HSMEMU_TLS_CA. A module
// file loaded once already is loaded again from a copy, so that one
// module can be measured through the socket and through TLS side by side:
// the dynamic linker would hand back the first, initialised, instance.
//
// "@ring:SOCKET" and "@socket:SOCKET" choose the module's transport to
// the daemon at SOCKET too (HSMEMU_TRANSPORT, docs/protocol.md, "Rings"),
// so the two can be measured side by side.
func loadModule(spec string) (*module, error) {
	path, socket, err := parseModuleSpec(spec)
	if err != nil {
		return nil, err
	}
	remote := strings.HasPrefix(socket, "tls://")
	transport := ""
	for _, t := range []string{"ring", "socket"} {
		if rest, ok := strings.CutPrefix(socket, t+":"); ok && rest != "" {
			transport, socket = t, rest
		}
	}
	if transport != "" {
		defer setEnv(map[string]string{"HSMEMU_TRANSPORT": transport})()
	}
	if socket != "" {
		vars := map[string]string{"HSMEMU_SOCKET": socket, "HSMEMU_SERVER": ""}
		if remote {
			vars = map[string]string{"HSMEMU_SERVER": socket, "HSMEMU_SOCKET": ""}
		}
		defer setEnv(vars)()
	}
	load := path
	if loaded[path] {
		if load, err = copyModule(path); err != nil {
			return nil, err
		}
		defer os.RemoveAll(filepath.Dir(load)) // mapped, it needs no file
	}
	cpath := C.CString(load)
	defer C.free(unsafe.Pointer(cpath))
	var buf [512]C.char
	m := &module{path: path, name: filepath.Base(path), remote: remote, transport: transport}
	if C.bm_load(cpath, &m.m, &buf[0], C.size_t(len(buf))) != 0 {
		return nil, fmt.Errorf("load %s: %s", path, C.GoString(&buf[0]))
	}
	loaded[path] = true
	if err := ok(C.bm_initialize(&m.m)); err != nil {
		C.bm_unload(&m.m)
		return nil, fmt.Errorf("%s: C_Initialize: %w", path, err)
	}
	return m, nil
}

// loaded are the module files loaded so far (Run loads them one by one).
var loaded = map[string]bool{}

// copyModule copies a module file into a new temporary directory.
func copyModule(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "hsb")
	if err != nil {
		return "", err
	}
	cp := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(cp, b, 0o700); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return cp, nil
}

// setEnv sets (or, for "", unsets) variables, with cgo in the C
// environment too, and returns what puts them back.
func setEnv(vars map[string]string) func() {
	type was struct {
		v   string
		had bool
	}
	old := map[string]was{}
	for k, v := range vars {
		o, had := os.LookupEnv(k)
		old[k] = was{o, had}
		if v == "" {
			os.Unsetenv(k)
		} else {
			os.Setenv(k, v)
		}
	}
	return func() {
		for k, w := range old {
			if w.had {
				os.Setenv(k, w.v)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

// parseModuleSpec splits "PATH[@SOCKET]". A spec that names an existing
// file is a path, '@' and all.
func parseModuleSpec(spec string) (path, socket string, err error) {
	i := strings.LastIndexByte(spec, '@')
	if i < 0 {
		return spec, "", nil
	}
	if _, err := os.Stat(spec); err == nil {
		return spec, "", nil
	}
	path, socket = spec[:i], spec[i+1:]
	if path == "" || socket == "" {
		return "", "", fmt.Errorf("module %q: want PATH or PATH@SOCKET", spec)
	}
	return path, socket, nil
}

func (m *module) close() {
	C.bm_finalize(&m.m)
	// The module stays mapped: a library's threads or atexit handlers may
	// still refer to it, and the process is about to end anyway.
}

// slotID names a slot of a module.
type slotID = C.CK_SLOT_ID

// slotInfo is what the harness needs to know of a slot.
type slotInfo struct {
	id          C.CK_SLOT_ID
	label       string
	initialized bool
	present     bool
}

func (m *module) slots() ([]slotInfo, error) {
	var n C.CK_ULONG
	if err := ok(C.bm_slots(&m.m, nil, &n)); err != nil {
		return nil, fmt.Errorf("C_GetSlotList: %w", err)
	}
	if n == 0 {
		return nil, nil
	}
	ids := make([]C.CK_SLOT_ID, n)
	if err := ok(C.bm_slots(&m.m, &ids[0], &n)); err != nil {
		return nil, fmt.Errorf("C_GetSlotList: %w", err)
	}
	var out []slotInfo
	for _, id := range ids[:n] {
		var ti C.CK_TOKEN_INFO
		s := slotInfo{id: id}
		if C.bm_token_info(&m.m, id, &ti) == C.CKR_OK {
			s.present = true
			s.label = strings.TrimRight(C.GoStringN((*C.char)(unsafe.Pointer(&ti.label[0])), 32), " \x00")
			s.initialized = ti.flags&C.CKF_TOKEN_INITIALIZED != 0
		}
		out = append(out, s)
	}
	return out, nil
}

// mechFlags returns the flags of a mechanism on the chosen slot, or false
// when the module does not offer it.
func (m *module) mechFlags(mech uint) (uint, bool) {
	var mi C.CK_MECHANISM_INFO
	if C.bm_mech_info(&m.m, m.slot, C.CK_MECHANISM_TYPE(mech), &mi) != C.CKR_OK {
		return 0, false
	}
	return uint(mi.flags), true
}

func (m *module) initToken(slot C.CK_SLOT_ID, soPIN, label string) error {
	var l [32]byte
	for i := range l {
		l[i] = ' '
	}
	copy(l[:], label)
	p := C.CBytes([]byte(soPIN))
	defer C.free(p)
	lp := C.CBytes(l[:])
	defer C.free(lp)
	return ok(C.bm_init_token(&m.m, slot, (*C.CK_UTF8CHAR)(p), C.CK_ULONG(len(soPIN)), (*C.CK_UTF8CHAR)(lp)))
}

type session C.CK_SESSION_HANDLE

func (m *module) open() (session, error) {
	var h C.CK_SESSION_HANDLE
	if err := ok(C.bm_open(&m.m, m.slot, &h)); err != nil {
		return 0, fmt.Errorf("C_OpenSession: %w", err)
	}
	return session(h), nil
}

func (m *module) closeSession(s session) { C.bm_close(&m.m, C.CK_SESSION_HANDLE(s)) }

func (m *module) login(s session, user uint, pin string) error {
	p := C.CBytes([]byte(pin))
	defer C.free(p)
	return ok(C.bm_login(&m.m, C.CK_SESSION_HANDLE(s), C.CK_USER_TYPE(user), (*C.CK_UTF8CHAR)(p), C.CK_ULONG(len(pin))))
}

func (m *module) logout(s session) error { return ok(C.bm_logout(&m.m, C.CK_SESSION_HANDLE(s))) }

func (m *module) initPIN(s session, pin string) error {
	p := C.CBytes([]byte(pin))
	defer C.free(p)
	return ok(C.bm_init_pin(&m.m, C.CK_SESSION_HANDLE(s), (*C.CK_UTF8CHAR)(p), C.CK_ULONG(len(pin))))
}

// attr is one template attribute, before it is laid out in C memory.
type attr struct {
	typ uint
	val []byte
}

func boolAttr(t uint, v bool) attr {
	if v {
		return attr{t, []byte{1}}
	}
	return attr{t, []byte{0}}
}

func ulongAttr(t uint, v uint) attr {
	b := make([]byte, C.sizeof_CK_ULONG)
	*(*C.CK_ULONG)(unsafe.Pointer(&b[0])) = C.CK_ULONG(v)
	return attr{t, b}
}

func bytesAttr(t uint, v []byte) attr { return attr{t, v} }

// template is a CK_ATTRIBUTE array and its values in C memory, so it may
// be handed to the module on any call, measured or not.
type template struct {
	p    *C.CK_ATTRIBUTE
	n    C.CK_ULONG
	vals []unsafe.Pointer
}

func newTemplate(attrs ...attr) *template {
	t := &template{n: C.CK_ULONG(len(attrs))}
	if len(attrs) == 0 {
		return t
	}
	t.p = (*C.CK_ATTRIBUTE)(C.calloc(C.size_t(len(attrs)), C.sizeof_CK_ATTRIBUTE))
	arr := unsafe.Slice(t.p, len(attrs))
	for i, a := range attrs {
		arr[i]._type = C.CK_ATTRIBUTE_TYPE(a.typ)
		if len(a.val) > 0 {
			v := C.CBytes(a.val)
			t.vals = append(t.vals, v)
			arr[i].pValue = v
		}
		arr[i].ulValueLen = C.CK_ULONG(len(a.val))
	}
	return t
}

func (t *template) free() {
	if t == nil {
		return
	}
	for _, v := range t.vals {
		C.free(v)
	}
	C.free(unsafe.Pointer(t.p))
	t.p, t.vals = nil, nil
}

// mechanism is a CK_MECHANISM in C memory.
type mechanism struct{ p *C.CK_MECHANISM }

func newMech(typ uint, param []byte) mechanism {
	var pp unsafe.Pointer
	if len(param) > 0 {
		pp = unsafe.Pointer(&param[0])
	}
	return mechanism{C.bm_mech_new(C.CK_MECHANISM_TYPE(typ), pp, C.CK_ULONG(len(param)))}
}

// newGCMMech makes AES-GCM parameters with a random IV, counted up by
// nextIV before each encryption.
func newGCMMech(ivLen, tagBits int) mechanism {
	m := mechanism{C.bm_mech_gcm(C.CK_ULONG(ivLen), C.CK_ULONG(tagBits))}
	iv := randomBytes(ivLen)
	C.bm_gcm_set_iv(m.p, ptr(iv), C.CK_ULONG(len(iv)))
	return m
}

func (m mechanism) nextIV() { C.bm_gcm_next_iv(m.p) }
func (m mechanism) free()   { C.bm_mech_free(m.p) }

type object C.CK_OBJECT_HANDLE

func (m *module) generateKey(s session, mech mechanism, t *template) (object, error) {
	var k C.CK_OBJECT_HANDLE
	err := ok(C.bm_generate_key(&m.m, C.CK_SESSION_HANDLE(s), mech.p, t.p, t.n, &k))
	return object(k), err
}

func (m *module) generateKeyPair(s session, mech mechanism, pub, priv *template) (object, object, error) {
	var pk, sk C.CK_OBJECT_HANDLE
	err := ok(C.bm_generate_key_pair(&m.m, C.CK_SESSION_HANDLE(s), mech.p, pub.p, pub.n, priv.p, priv.n, &pk, &sk))
	return object(pk), object(sk), err
}

func (m *module) create(s session, t *template) (object, error) {
	var o C.CK_OBJECT_HANDLE
	err := ok(C.bm_create(&m.m, C.CK_SESSION_HANDLE(s), t.p, t.n, &o))
	return object(o), err
}

func (m *module) destroy(s session, o object) error {
	return ok(C.bm_destroy(&m.m, C.CK_SESSION_HANDLE(s), C.CK_OBJECT_HANDLE(o)))
}

// find returns up to max objects matching t.
func (m *module) find(s session, t *template, max int) ([]object, error) {
	objs := make([]C.CK_OBJECT_HANDLE, max)
	var n C.CK_ULONG
	if err := ok(C.bm_find(&m.m, C.CK_SESSION_HANDLE(s), t.p, t.n, &objs[0], C.CK_ULONG(max), &n)); err != nil {
		return nil, err
	}
	out := make([]object, n)
	for i := range out {
		out[i] = object(objs[i])
	}
	return out, nil
}

// findAll returns every object matching t.
func (m *module) findAll(s session, t *template) ([]object, error) {
	const batch = 256
	objs := make([]C.CK_OBJECT_HANDLE, batch)
	if err := ok(C.bm_find_init(&m.m, C.CK_SESSION_HANDLE(s), t.p, t.n)); err != nil {
		return nil, err
	}
	defer C.bm_find_final(&m.m, C.CK_SESSION_HANDLE(s))
	var out []object
	for {
		var n C.CK_ULONG
		if err := ok(C.bm_find_next(&m.m, C.CK_SESSION_HANDLE(s), &objs[0], batch, &n)); err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		for _, o := range objs[:n] {
			out = append(out, object(o))
		}
	}
}

// The measured calls. Buffers are Go memory holding no pointers, which cgo
// lets a C call use for its duration.

func ptr(b []byte) *C.uchar {
	if len(b) == 0 {
		return nil
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

// cBool is a C int for a Go bool.
func cBool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// wrap, sign, encrypt and digest make their output call once with out
// (one-call), or with twoCall first with a NULL buffer for the length.
func (m *module) wrap(s session, mech mechanism, wrapping, key object, out []byte, twoCall bool) (int, error) {
	n := C.CK_ULONG(len(out))
	err := ok(C.bm_wrap(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(wrapping), C.CK_OBJECT_HANDLE(key), ptr(out), &n, cBool(twoCall)))
	return int(n), err
}

func (m *module) unwrap(s session, mech mechanism, unwrapping object, in []byte, t *template) (object, error) {
	var k C.CK_OBJECT_HANDLE
	err := ok(C.bm_unwrap(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(unwrapping), ptr(in), C.CK_ULONG(len(in)), t.p, t.n, &k))
	return object(k), err
}

func (m *module) sign(s session, mech mechanism, key object, data, sig []byte, twoCall bool) (int, error) {
	n := C.CK_ULONG(len(sig))
	err := ok(C.bm_sign(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(key), ptr(data), C.CK_ULONG(len(data)), ptr(sig), &n, cBool(twoCall)))
	return int(n), err
}

func (m *module) verify(s session, mech mechanism, key object, data, sig []byte) error {
	return ok(C.bm_verify(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(key), ptr(data), C.CK_ULONG(len(data)), ptr(sig), C.CK_ULONG(len(sig))))
}

func (m *module) encrypt(s session, mech mechanism, key object, data, out []byte, twoCall bool) (int, error) {
	n := C.CK_ULONG(len(out))
	err := ok(C.bm_encrypt(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(key), ptr(data), C.CK_ULONG(len(data)), ptr(out), &n, cBool(twoCall)))
	return int(n), err
}

func (m *module) digest(s session, mech mechanism, data, out []byte, twoCall bool) (int, error) {
	n := C.CK_ULONG(len(out))
	err := ok(C.bm_digest(&m.m, C.CK_SESSION_HANDLE(s), mech.p, ptr(data), C.CK_ULONG(len(data)), ptr(out), &n, cBool(twoCall)))
	return int(n), err
}

func (m *module) random(s session, out []byte) error {
	return ok(C.bm_random(&m.m, C.CK_SESSION_HANDLE(s), ptr(out), C.CK_ULONG(len(out))))
}

// loginLogout takes a C copy of the PIN made once by the caller.
func (m *module) loginLogout(s session, pin unsafe.Pointer, n int) error {
	return ok(C.bm_login_logout(&m.m, C.CK_SESSION_HANDLE(s), (*C.CK_UTF8CHAR)(pin), C.CK_ULONG(n)))
}

func (m *module) generateDestroy(s session, mech mechanism, t *template) error {
	return ok(C.bm_generate_destroy(&m.m, C.CK_SESSION_HANDLE(s), mech.p, t.p, t.n))
}

// encapsulate is C_EncapsulateKey (3.2) into a new key of template t.
func (m *module) encapsulate(s session, mech mechanism, pub object, t *template, ct []byte) (int, object, error) {
	n := C.CK_ULONG(len(ct))
	var k C.CK_OBJECT_HANDLE
	rv := C.bm_encapsulate(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(pub), t.p, t.n, ptr(ct), &n, &k)
	return int(n), object(k), ok(rv)
}

// decapsulate is C_DecapsulateKey (3.2).
func (m *module) decapsulate(s session, mech mechanism, priv object, t *template, ct []byte) (object, error) {
	var k C.CK_OBJECT_HANDLE
	rv := C.bm_decapsulate(&m.m, C.CK_SESSION_HANDLE(s), mech.p, C.CK_OBJECT_HANDLE(priv), t.p, t.n, ptr(ct), C.CK_ULONG(len(ct)), &k)
	return object(k), ok(rv)
}

func cBytes(b []byte) unsafe.Pointer { return C.CBytes(b) }
func cFree(p unsafe.Pointer)         { C.free(p) }
