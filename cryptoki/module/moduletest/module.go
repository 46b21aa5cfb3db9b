//go:build cgo

package moduletest

/*
#cgo CFLAGS: -I${SRCDIR}/..
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "p11compat.h"

static void *mt_open(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static const char *mt_dlerror(void) { return dlerror(); }

static CK_FUNCTION_LIST_3_0 *mt_list(void *lib)
{
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_INTERFACE_PTR itf = NULL;
	if (gi == NULL || gi(NULL, NULL, &itf, 0) != CKR_OK)
		return NULL;
	return itf->pFunctionList;
}

static CK_RV mt_initialize(CK_FUNCTION_LIST_3_0 *f) { return f->C_Initialize(NULL); }
static CK_RV mt_finalize(CK_FUNCTION_LIST_3_0 *f) { return f->C_Finalize(NULL); }
static CK_RV mt_slot_list(CK_FUNCTION_LIST_3_0 *f, CK_BBOOL present, CK_ULONG *list, CK_ULONG *n)
{
	return f->C_GetSlotList(present, list, n);
}
static CK_RV mt_token_info(CK_FUNCTION_LIST_3_0 *f, CK_SLOT_ID slot, CK_TOKEN_INFO *ti)
{
	return f->C_GetTokenInfo(slot, ti);
}
static CK_RV mt_open_session(CK_FUNCTION_LIST_3_0 *f, CK_SLOT_ID slot, CK_SESSION_HANDLE *s)
{
	return f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, s);
}
static CK_RV mt_get_attrs(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
			  CK_ATTRIBUTE *t, CK_ULONG n)
{
	return f->C_GetAttributeValue(s, o, t, n);
}
static CK_RV mt_create(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG n,
		       CK_OBJECT_HANDLE *o)
{
	return f->C_CreateObject(s, t, n, o);
}
static CK_RV mt_random(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_BYTE *p, CK_ULONG n)
{
	return f->C_GenerateRandom(s, p, n);
}
static CK_RV mt_encrypt(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_BYTE *in, CK_ULONG n,
			CK_BYTE *out, CK_ULONG *outlen)
{
	return f->C_Encrypt(s, in, n, out, outlen);
}
static CK_RV mt_encrypt_init_gcm(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_BYTE *iv,
				 CK_ULONG ivlen, CK_BYTE *aad, CK_ULONG aadlen, CK_ULONG tagbits,
				 CK_OBJECT_HANDLE key)
{
	CK_GCM_PARAMS p = {iv, ivlen, ivlen * 8, aad, aadlen, tagbits};
	CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
	return f->C_EncryptInit(s, &m, key);
}
static CK_RV mt_find(CK_FUNCTION_LIST_3_0 *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h, CK_ULONG max,
		     CK_ULONG *n)
{
	return f->C_FindObjects(s, h, max, n);
}

// mt_fork_child forks; the child, which must not return to Go, checks that
// the module refuses it until C_Initialize, then makes one call through a
// connection of its own, and exits with a bit per failed step.
static int mt_fork_child(CK_FUNCTION_LIST_3_0 *f)
{
	pid_t pid = fork();
	if (pid != 0)
		return (int)pid;
	int bad = 0;
	CK_ULONG n = 0;
	bad |= f->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED;
	bad |= (f->C_Initialize(NULL) != CKR_OK) << 1;
	bad |= (f->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n != 3) << 2;
	bad |= (f->C_Finalize(NULL) != CKR_OK) << 3;
	_exit(bad);
}

static int mt_wait(int pid)
{
	int status = 0;
	if (waitpid((pid_t)pid, &status, 0) != (pid_t)pid || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}
*/
import "C"

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"hsmemu/cryptoki/ck"
)

// Module is the dlopened C module.
type Module struct {
	f   *C.CK_FUNCTION_LIST_3_0
	lib unsafe.Pointer // for the 3.2 function list (wrapauth.go)
}

// Load dlopens the module at path.
func Load(path string) (*Module, error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	lib := C.mt_open(cpath)
	if lib == nil {
		return nil, fmt.Errorf("dlopen %s: %s", path, C.GoString(C.mt_dlerror()))
	}
	f := C.mt_list(lib)
	if f == nil {
		return nil, errors.New("C_GetInterface failed")
	}
	return &Module{f: f, lib: lib}, nil
}

// RV is a CK_RV: ck.Error, which names it in test messages.
type RV = ck.Error

func (m *Module) Initialize() RV { return RV(C.mt_initialize(m.f)) }
func (m *Module) Finalize() RV   { return RV(C.mt_finalize(m.f)) }

// SlotList calls C_GetSlotList with a buffer of capacity items (nil: a size
// query) and returns the rv, the count and the items.
func (m *Module) SlotList(capacity int, nullList bool) (RV, uint64, []uint64) {
	buf := (*C.CK_ULONG)(C.calloc(C.size_t(capacity+1), C.sizeof_CK_ULONG))
	defer C.free(unsafe.Pointer(buf))
	n := C.CK_ULONG(capacity)
	list := buf
	if nullList {
		list = nil
	}
	rv := C.mt_slot_list(m.f, C.CK_FALSE, list, &n)
	items := unsafe.Slice(buf, capacity+1)
	var out []uint64
	for i := 0; i < capacity; i++ {
		out = append(out, uint64(items[i]))
	}
	return RV(rv), uint64(n), out
}

// TokenInfo is the part of CK_TOKEN_INFO the tests look at.
type TokenInfo struct {
	Label, Model           string
	Flags, MaxSessionCount uint64
	MinPinLen, FreePrivMem uint64
	HardwareMajor, HWMinor byte
	UTCTime                string
}

func (m *Module) TokenInfo(slot uint64) (RV, TokenInfo) {
	var ti C.CK_TOKEN_INFO
	rv := C.mt_token_info(m.f, C.CK_SLOT_ID(slot), &ti)
	return RV(rv), TokenInfo{
		Label:           C.GoStringN((*C.char)(unsafe.Pointer(&ti.label[0])), 32),
		Model:           C.GoStringN((*C.char)(unsafe.Pointer(&ti.model[0])), 16),
		Flags:           uint64(ti.flags),
		MaxSessionCount: uint64(ti.ulMaxSessionCount),
		MinPinLen:       uint64(ti.ulMinPinLen),
		FreePrivMem:     uint64(ti.ulFreePrivateMemory),
		HardwareMajor:   byte(ti.hardwareVersion.major),
		HWMinor:         byte(ti.hardwareVersion.minor),
		UTCTime:         C.GoStringN((*C.char)(unsafe.Pointer(&ti.utcTime[0])), 16),
	}
}

func (m *Module) OpenSession(slot uint64) (RV, uint64) {
	var s C.CK_SESSION_HANDLE
	rv := C.mt_open_session(m.f, C.CK_SLOT_ID(slot), &s)
	return RV(rv), uint64(s)
}

// Attr is one attribute of a C template. Value nil with Len > 0 is a
// buffer of Len bytes (for C_GetAttributeValue); Null a NULL pValue.
type Attr struct {
	Type  uint64
	Value []byte
	Null  bool
	Len   int
}

// cTemplate allocates a C template; free releases it.
func cTemplate(attrs []Attr) (t *C.CK_ATTRIBUTE, free func()) {
	n := len(attrs)
	t = (*C.CK_ATTRIBUTE)(C.calloc(C.size_t(n+1), C.sizeof_CK_ATTRIBUTE))
	ts := unsafe.Slice(t, n+1)
	var ptrs []unsafe.Pointer
	for i, a := range attrs {
		ts[i]._type = C.CK_ATTRIBUTE_TYPE(a.Type)
		size := a.Len
		if a.Value != nil {
			size = len(a.Value)
		}
		ts[i].ulValueLen = C.CK_ULONG(size)
		if a.Null {
			continue
		}
		p := C.calloc(C.size_t(size+1), 1)
		ptrs = append(ptrs, p)
		if a.Value != nil {
			copy(unsafe.Slice((*byte)(p), size), a.Value)
		}
		ts[i].pValue = p
	}
	return t, func() {
		for _, p := range ptrs {
			C.free(p)
		}
		C.free(unsafe.Pointer(t))
	}
}

// Ulong is a host CK_ULONG's bytes, as an application puts it in a template.
func Ulong(v uint64) []byte {
	b := make([]byte, C.sizeof_CK_ULONG)
	binary.NativeEndian.PutUint64(b, v)
	return b
}

// GetAttributes calls C_GetAttributeValue and returns the rv, each
// attribute's ulValueLen and the bytes of its buffer (nil for NULL).
func (m *Module) GetAttributes(session, object uint64, attrs []Attr) (RV, []uint64, [][]byte) {
	t, free := cTemplate(attrs)
	defer free()
	rv := C.mt_get_attrs(m.f, C.CK_SESSION_HANDLE(session), C.CK_OBJECT_HANDLE(object), t, C.CK_ULONG(len(attrs)))
	ts := unsafe.Slice(t, len(attrs))
	lens := make([]uint64, len(attrs))
	vals := make([][]byte, len(attrs))
	for i, a := range attrs {
		lens[i] = uint64(ts[i].ulValueLen)
		if ts[i].pValue != nil {
			size := a.Len
			if a.Value != nil {
				size = len(a.Value)
			}
			vals[i] = C.GoBytes(ts[i].pValue, C.int(size))
		}
	}
	return RV(rv), lens, vals
}

// CreateObject calls C_CreateObject. A nested template goes in Nested.
func (m *Module) CreateObject(session uint64, attrs []Attr, nestedType uint64, nested []Attr) (RV, uint64) {
	t, free := cTemplate(attrs)
	defer free()
	n := len(attrs)
	if nested != nil {
		nt, nfree := cTemplate(nested)
		defer nfree()
		// The nested template is the value of one more attribute.
		full, ffree := cTemplate(append(attrs, Attr{Type: nestedType, Null: true}))
		defer ffree()
		fs := unsafe.Slice(full, n+1)
		fs[n].pValue = unsafe.Pointer(nt)
		fs[n].ulValueLen = C.CK_ULONG(len(nested)) * C.sizeof_CK_ATTRIBUTE
		t, n = full, n+1
	}
	var h C.CK_OBJECT_HANDLE
	rv := C.mt_create(m.f, C.CK_SESSION_HANDLE(session), t, C.CK_ULONG(n), &h)
	return RV(rv), uint64(h)
}

// GenerateRandom calls C_GenerateRandom for n bytes.
func (m *Module) GenerateRandom(session uint64, n int) (RV, []byte) {
	p := C.calloc(C.size_t(n+1), 1)
	defer C.free(p)
	rv := C.mt_random(m.f, C.CK_SESSION_HANDLE(session), (*C.CK_BYTE)(p), C.CK_ULONG(n))
	return RV(rv), C.GoBytes(p, C.int(n))
}

// Encrypt calls C_Encrypt with an output buffer of capacity bytes (null: a
// size query) and returns the rv, *pulEncryptedDataLen and the output.
func (m *Module) Encrypt(session uint64, data []byte, capacity int, null bool) (RV, uint64, []byte) {
	in := C.CBytes(append(data, 0))
	defer C.free(in)
	out := C.calloc(C.size_t(capacity+1), 1)
	defer C.free(out)
	outp := (*C.CK_BYTE)(out)
	if null {
		outp = nil
	}
	n := C.CK_ULONG(capacity)
	rv := C.mt_encrypt(m.f, C.CK_SESSION_HANDLE(session), (*C.CK_BYTE)(in), C.CK_ULONG(len(data)), outp, &n)
	return RV(rv), uint64(n), C.GoBytes(out, C.int(capacity))
}

// EncryptInitGCM calls C_EncryptInit with CKM_AES_GCM.
func (m *Module) EncryptInitGCM(session uint64, iv, aad []byte, tagBits uint64, key uint64) RV {
	civ := C.CBytes(append(iv, 0))
	defer C.free(civ)
	caad := C.CBytes(append(aad, 0))
	defer C.free(caad)
	return RV(C.mt_encrypt_init_gcm(m.f, C.CK_SESSION_HANDLE(session), (*C.CK_BYTE)(civ), C.CK_ULONG(len(iv)),
		(*C.CK_BYTE)(caad), C.CK_ULONG(len(aad)), C.CK_ULONG(tagBits), C.CK_OBJECT_HANDLE(key)))
}

// FindObjects calls C_FindObjects with room for max handles.
func (m *Module) FindObjects(session uint64, max int) (RV, []uint64) {
	h := (*C.CK_OBJECT_HANDLE)(C.calloc(C.size_t(max+1), C.sizeof_CK_OBJECT_HANDLE))
	defer C.free(unsafe.Pointer(h))
	var n C.CK_ULONG
	rv := C.mt_find(m.f, C.CK_SESSION_HANDLE(session), h, C.CK_ULONG(max), &n)
	hs := unsafe.Slice(h, max+1)
	var out []uint64
	for i := 0; i < int(n) && i <= max; i++ {
		out = append(out, uint64(hs[i]))
	}
	return RV(rv), out
}

// NestedAttr is one attribute of a template read back from a template
// attribute (CKA_WRAP_TEMPLATE, ...).
type NestedAttr struct {
	Type  uint64
	Len   uint64
	Value []byte
}

// GetTemplateAttr reads template attribute typ of an object with
// C_GetAttributeValue. With room < 0 it is a size query; otherwise the
// caller's array has room attributes, the i-th with a buffer of bufs[i]
// bytes. It returns the rv, the attribute's ulValueLen and the array.
func (m *Module) GetTemplateAttr(session, object, typ uint64, room int, bufs []int) (RV, uint64, []NestedAttr) {
	outer, free := cTemplate([]Attr{{Type: typ, Null: true}})
	defer free()
	var nested []Attr
	for _, n := range bufs {
		nested = append(nested, Attr{Len: n})
	}
	inner, ifree := cTemplate(nested)
	defer ifree()
	outs := unsafe.Slice(outer, 1)
	if room >= 0 {
		outs[0].pValue = unsafe.Pointer(inner)
		outs[0].ulValueLen = C.CK_ULONG(room) * C.sizeof_CK_ATTRIBUTE
	}
	rv := C.mt_get_attrs(m.f, C.CK_SESSION_HANDLE(session), C.CK_OBJECT_HANDLE(object), outer, 1)
	var out []NestedAttr
	is := unsafe.Slice(inner, len(bufs)+1)
	for i, n := range bufs {
		out = append(out, NestedAttr{Type: uint64(is[i]._type), Len: uint64(is[i].ulValueLen),
			Value: C.GoBytes(is[i].pValue, C.int(n))})
	}
	return RV(rv), uint64(outs[0].ulValueLen), out
}

// ForkChild forks a child that exercises the module on its own (see
// mt_fork_child) and returns its exit status: 0 when every step held.
func (m *Module) ForkChild() int {
	pid := C.mt_fork_child(m.f)
	if pid < 0 {
		return -1
	}
	return int(C.mt_wait(pid))
}
