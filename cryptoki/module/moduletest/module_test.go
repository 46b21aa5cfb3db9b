//go:build cgo

package moduletest

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/internal/testenv"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/wire"
)

const (
	ckaClass             = 0x000
	ckaToken             = 0x001
	ckaLabel             = 0x003
	ckaValue             = 0x011
	ckaKeyType           = 0x100
	ckaAllowedMechanisms = 0x40000600
	ckaWrapTemplate      = 0x40000211
	unavailable          = ^uint64(0)
)

var (
	loadOnce sync.Once
	mod      *Module
	loadErr  error
)

// module loads bin/hsmemu-pkcs11.so (or $HSMEMU_MODULE). Without it the
// test skips, except under CI=true, where a missing module is a failure.
func module(t *testing.T) *Module {
	t.Helper()
	loadOnce.Do(func() {
		path := os.Getenv("HSMEMU_MODULE")
		if path == "" {
			path = filepath.Join("..", "..", "..", "bin", "hsmemu-pkcs11.so")
		}
		if _, err := os.Stat(path); err != nil {
			loadErr = err
			return
		}
		mod, loadErr = Load(path)
	})
	if loadErr != nil {
		testenv.Missing(t, "module: %v (make module builds it)", loadErr)
	}
	return mod
}

// session starts the module against a peer and finalises it at the end.
func session(t *testing.T, h Handler) (*Module, *Peer) {
	t.Helper()
	m := module(t)
	p := Listen(t, h)
	t.Setenv("HSMEMU_SOCKET", p.Path)
	if rv := m.Initialize(); rv != 0 {
		t.Fatalf("C_Initialize: %v", rv)
	}
	t.Cleanup(func() {
		if rv := m.Finalize(); rv != 0 {
			t.Errorf("C_Finalize: %v", rv)
		}
	})
	return m, p
}

func be64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func TestSlotListSizeQuery(t *testing.T) {
	var mu sync.Mutex // the peer's goroutines write, the test reads
	var specs []wire.OutSpec
	m, p := session(t, func(q Req) Resp {
		if q.Call.Name != "C_GetSlotList" {
			return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		}
		spec := q.Args.Out(1)
		mu.Lock()
		specs = append(specs, spec)
		mu.Unlock()
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(spec, []uint64{1, 2, 3}) })
	})

	rv, n, _ := m.SlotList(0, true)
	if rv != 0 || n != 3 {
		t.Fatalf("size query: rv %v, count %d; want 0, 3", rv, n)
	}
	rv, n, _ = m.SlotList(2, false)
	if rv != ck.CKR_BUFFER_TOO_SMALL || n != 3 {
		t.Fatalf("short buffer: rv %v, count %d; want CKR_BUFFER_TOO_SMALL, 3", rv, n)
	}
	rv, n, items := m.SlotList(4, false)
	if rv != 0 || n != 3 || items[0] != 1 || items[1] != 2 || items[2] != 3 || items[3] != 0 {
		t.Fatalf("full buffer: rv %v, count %d, items %v", rv, n, items)
	}
	want := []wire.OutSpec{{Present: false}, {Present: true, Capacity: 2}, {Present: true, Capacity: 4}}
	mu.Lock()
	defer mu.Unlock()
	for i := range want {
		if specs[i] != want[i] {
			t.Errorf("request %d: outspec %+v, want %+v", i, specs[i], want[i])
		}
	}
	if h := p.Hellos(); len(h) != 1 || h[0].Version != wire.Version || h[0].PID != uint32(os.Getpid()) || h[0].AppID == [16]byte{} {
		t.Errorf("hellos %+v: want one, the current version, our pid, an application id", h)
	}
}

// A daemon of protocol version 1 refuses the module's version 3 hello; the
// module dials again speaking version 1, and is served.
func TestVersion1Daemon(t *testing.T) {
	m, p := session(t, func(q Req) Resp {
		if q.Call.Name != "C_GetSlotList" {
			return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		}
		spec := q.Args.Out(1)
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(spec, []uint64{4, 5}) })
	})
	p.SpeakUpTo(1)
	if rv, n, list := m.SlotList(2, false); rv != 0 || n != 2 || list[0] != 4 || list[1] != 5 {
		t.Fatalf("slot list from a version 1 daemon: rv %v, %d %v", rv, n, list)
	}
	h := p.Hellos()
	if len(h) != 2 || h[0].Version != wire.Version || h[1].Version != 1 {
		t.Fatalf("hellos %+v: want the current version, then version 1", h)
	}
}

// A daemon of protocol version 2 knows no prefetch: the module dials again
// speaking version 2, and its size queries go as plain NULL buffers.
func TestVersion2DaemonNoPrefetch(t *testing.T) {
	m, p := session(t, func(q Req) Resp {
		if q.Call.Name != "C_Encrypt" {
			return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
		}
		spec := q.Args.Out(2)
		if spec.Prefetch {
			return Resp{RV: ck.CKR_ARGUMENTS_BAD}
		}
		return Reply("C_Encrypt", func(r *wire.Results) uint64 { return r.OutBytes(spec, []byte("sig")) })
	})
	p.SpeakUpTo(2)
	for i := 0; i < 2; i++ {
		if rv, n, _ := m.Encrypt(1, []byte("data"), 0, true); rv != 0 || n != 3 {
			t.Fatalf("size query to a version 2 daemon: rv %v, length %d", rv, n)
		}
	}
	h := p.Hellos()
	if len(h) != 2 || h[0].Version != wire.Version || h[1].Version != 2 {
		t.Fatalf("hellos %+v: want the current version, then version 2", h)
	}
}

// A daemon that accepts and never answers costs the calls that wait to
// dial it one hello timeout together, not one each in turn: when a dial
// fails, the threads queued behind it fail at once.
func TestHungDaemonDialsOnce(t *testing.T) {
	m, p := session(t, func(Req) Resp { return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED} })
	p.Mute()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.SlotList(4, false) // the offline answer, once no daemon answers
		}()
	}
	wg.Wait()
	if h := p.Hellos(); len(h) != 1 {
		t.Fatalf("%d hellos from 4 waiting calls, want 1", len(h))
	}
}

func TestTokenInfo(t *testing.T) {
	m, _ := session(t, func(q Req) Resp {
		if q.Args.Ulong(0) != 7 {
			return Resp{RV: ck.CKR_SLOT_ID_INVALID}
		}
		return Reply("C_GetTokenInfo", func(r *wire.Results) uint64 {
			r.Struct(&wire.TokenInfo{
				Label: "my token", Model: "hsmemu", Flags: 0x40d,
				MaxSessionCount: unavailable, MinPinLen: 4, FreePrivateMemory: unavailable,
				HardwareVersion: wire.CKVersion{Major: 1, Minor: 2}, UTCTime: "2025010203040500",
			})
			return 0
		})
	})
	rv, ti := m.TokenInfo(7)
	if rv != 0 {
		t.Fatalf("C_GetTokenInfo: %v", rv)
	}
	want := TokenInfo{
		Label: wire.Pad("my token", 32), Model: wire.Pad("hsmemu", 16), Flags: 0x40d,
		MaxSessionCount: unavailable, MinPinLen: 4, FreePrivMem: unavailable,
		HardwareMajor: 1, HWMinor: 2, UTCTime: "2025010203040500",
	}
	if ti != want {
		t.Errorf("token info\n got %+v\nwant %+v", ti, want)
	}
	if rv, _ := m.TokenInfo(8); rv != ck.CKR_SLOT_ID_INVALID {
		t.Errorf("slot 8: %v, want CKR_SLOT_ID_INVALID", rv)
	}
}

func TestGetAttributeValueSensitive(t *testing.T) {
	var mu sync.Mutex
	var queries []wire.Query
	m, _ := session(t, func(q Req) Resp {
		mu.Lock()
		queries = q.Args.Query(2)
		mu.Unlock()
		return Reply("C_GetAttributeValue", func(r *wire.Results) uint64 {
			r.Answers([]wire.Answer{
				{Length: 8, Value: be64(4)}, // CKA_CLASS: CKO_SECRET_KEY
				{Length: unavailable},       // CKA_VALUE: sensitive
				{Length: 5},                 // CKA_LABEL: size only
				{Length: 16, Value: append(be64(0x1087), be64(0x1085)...)}, // CKA_ALLOWED_MECHANISMS
				{Length: unavailable}, // CKA_KEY_TYPE: buffer too small
			})
			return ck.CKR_ATTRIBUTE_SENSITIVE
		})
	})
	attrs := []Attr{
		{Type: ckaClass, Len: 8},
		{Type: ckaValue, Len: 32},
		{Type: ckaLabel, Null: true},
		{Type: ckaAllowedMechanisms, Len: 32},
		{Type: ckaKeyType, Len: 4},
	}
	rv, lens, vals := m.GetAttributes(1, 2, attrs)
	if rv != ck.CKR_ATTRIBUTE_SENSITIVE {
		t.Fatalf("rv %v, want CKR_ATTRIBUTE_SENSITIVE", rv)
	}
	wantQ := []wire.Query{
		{Type: ckaClass, Present: true, Capacity: 8}, {Type: ckaValue, Present: true, Capacity: 32}, {Type: ckaLabel, Present: false, Capacity: 0},
		{Type: ckaAllowedMechanisms, Present: true, Capacity: 32}, {Type: ckaKeyType, Present: true, Capacity: 0}, // a CK_ULONG in 4 bytes: capacity 0
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range wantQ {
		if queries[i] != wantQ[i] {
			t.Errorf("query %d: %+v, want %+v", i, queries[i], wantQ[i])
		}
	}
	wantLens := []uint64{8, unavailable, 5, 16, unavailable}
	for i := range wantLens {
		if lens[i] != wantLens[i] {
			t.Errorf("attribute %d: ulValueLen %#x, want %#x", i, lens[i], wantLens[i])
		}
	}
	if !bytes.Equal(vals[0], Ulong(4)) {
		t.Errorf("CKA_CLASS %x, want a host CK_ULONG 4", vals[0])
	}
	if !bytes.Equal(vals[3][:16], append(Ulong(0x1087), Ulong(0x1085)...)) {
		t.Errorf("CKA_ALLOWED_MECHANISMS %x", vals[3])
	}
	if !bytes.Equal(vals[1], make([]byte, 32)) {
		t.Errorf("sensitive value's buffer was written: %x", vals[1])
	}
}

// TestAttributeLengthOnlyToBuffer: an attribute whose caller gave a buffer
// is answered with its value, or with CK_UNAVAILABLE_INFORMATION when the
// buffer is too short; a length alone, as to a NULL pValue, would leave
// the caller with a length over its buffer, or bytes never written, under
// CKR_OK. It is malformed, and the template is left alone.
func TestAttributeLengthOnlyToBuffer(t *testing.T) {
	var length atomic.Uint64
	m, _ := session(t, func(q Req) Resp {
		res := binary.BigEndian.AppendUint32(nil, 1)
		res = append(res, be64(length.Load())...)
		res = append(res, 0xff, 0xff, 0xff, 0xff) // no value
		return Resp{RV: 0, Results: res}
	})
	for _, n := range []uint64{3, 100} {
		length.Store(n)
		rv, lens, vals := m.GetAttributes(1, 2, []Attr{{Type: ckaLabel, Len: 5}})
		if rv != ck.CKR_DEVICE_ERROR || lens[0] != 5 || !bytes.Equal(vals[0], make([]byte, 5)) {
			t.Errorf("length %d without a value: rv %v, ulValueLen %d, value %x; want CKR_DEVICE_ERROR, 5, untouched",
				n, rv, lens[0], vals[0])
		}
	}
}

// TestAttributeUnavailableUnderOK: CKR_OK says every attribute was
// answered; one answered CK_UNAVAILABLE_INFORMATION under it would hand
// the caller a length of ~0 for its buffer. It is malformed.
func TestAttributeUnavailableUnderOK(t *testing.T) {
	m, _ := session(t, func(q Req) Resp {
		res := binary.BigEndian.AppendUint32(nil, 1)
		res = append(res, be64(unavailable)...)
		res = append(res, 0xff, 0xff, 0xff, 0xff)
		return Resp{RV: 0, Results: res}
	})
	rv, lens, vals := m.GetAttributes(1, 2, []Attr{{Type: ckaLabel, Len: 5}})
	if rv != ck.CKR_DEVICE_ERROR || lens[0] != 5 || !bytes.Equal(vals[0], make([]byte, 5)) {
		t.Errorf("CK_UNAVAILABLE_INFORMATION under CKR_OK: rv %v, ulValueLen %#x, value %x; want CKR_DEVICE_ERROR, 5, untouched",
			rv, lens[0], vals[0])
	}
}

// TestTemplateAttributeAnswer reads CKA_WRAP_TEMPLATE back: the answer's
// length counts attributes and its value holds a template (docs/protocol.md,
// "Attribute values"). package wire's Answers insists that a value be as
// long as its length, so this reply is built by hand.
func TestTemplateAttributeAnswer(t *testing.T) {
	nested := binary.BigEndian.AppendUint32(nil, 2)
	nested = append(nested, be64(ckaClass)...)
	nested = append(binary.BigEndian.AppendUint32(nested, 8), be64(4)...)
	nested = append(nested, be64(ckaLabel)...)
	nested = append(binary.BigEndian.AppendUint32(nested, 3), "abc"...)
	m, _ := session(t, func(q Req) Resp {
		qs := q.Args.Query(2)
		res := binary.BigEndian.AppendUint32(nil, 1)
		res = append(res, be64(2)...)
		if !qs[0].Present {
			return Resp{RV: 0, Results: binary.BigEndian.AppendUint32(res, 0xFFFFFFFF)}
		}
		if qs[0].Capacity != 2 {
			return Resp{RV: ck.CKR_GENERAL_ERROR}
		}
		res = binary.BigEndian.AppendUint32(res, uint32(len(nested)))
		return Resp{RV: 0, Results: append(res, nested...)}
	})
	rv, n, _ := m.GetTemplateAttr(1, 2, ckaWrapTemplate, -1, nil)
	size := uint64(len(Ulong(0))) * 3 // sizeof(CK_ATTRIBUTE) on LP64: type, pointer, length
	if rv != 0 || n != 2*size {
		t.Fatalf("size query: %v, %d; want 0, %d", rv, n, 2*size)
	}
	rv, n, attrs := m.GetTemplateAttr(1, 2, ckaWrapTemplate, 2, []int{8, 2})
	if rv != ck.CKR_BUFFER_TOO_SMALL || n != 2*size {
		t.Fatalf("read: %v, %d; want CKR_BUFFER_TOO_SMALL (the label does not fit), %d", rv, n, 2*size)
	}
	if attrs[0].Type != ckaClass || attrs[0].Len != 8 || !bytes.Equal(attrs[0].Value, Ulong(4)) {
		t.Errorf("nested CKA_CLASS: %+v", attrs[0])
	}
	if attrs[1].Type != ckaLabel || attrs[1].Len != unavailable {
		t.Errorf("nested CKA_LABEL: %+v, want CK_UNAVAILABLE_INFORMATION", attrs[1])
	}
}

func TestMalformedReplies(t *testing.T) {
	var mode atomic.Int32
	m, _ := session(t, func(q Req) Resp {
		switch mode.Load() {
		case 0: // more items than the caller's buffer holds
			return Resp{RV: 0, Results: append(be64(5), append([]byte{0, 0, 0, 5}, make([]byte, 40)...)...)}
		case 1: // trailing bytes
			r := Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(q.Args.Out(1), []uint64{1}) })
			r.Results = append(r.Results, 0)
			return r
		case 2: // CKR_OK without results
			return Resp{RV: 0}
		case 3: // CKR_OK, a count over capacity and no items
			return Resp{RV: 0, Results: append(be64(5), 0xff, 0xff, 0xff, 0xff)}
		case 4: // CKR_OK, a count that fits and no items
			return Resp{RV: 0, Results: append(be64(1), 0xff, 0xff, 0xff, 0xff)}
		default: // a frame over 16 MiB
			return Resp{Raw: []byte{0x01, 0x00, 0x00, 0x01}}
		}
	})
	for i, name := range []string{"count over capacity", "trailing bytes", "no results", "count over capacity without items",
		"count without items", "huge frame"} {
		mode.Store(int32(i))
		rv, n, items := m.SlotList(2, false)
		if rv != ck.CKR_DEVICE_ERROR {
			t.Errorf("%s: rv %v, want CKR_DEVICE_ERROR", name, rv)
		}
		if n != 2 || items[0] != 0 || items[1] != 0 {
			t.Errorf("%s: outputs written (count %d, items %v)", name, n, items)
		}
	}
}

func TestDisconnectMidCallReconnects(t *testing.T) {
	var calls atomic.Int32
	m, p := session(t, func(q Req) Resp {
		if calls.Add(1) == 2 {
			return Resp{Close: true} // the daemon dies with the request in hand
		}
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(q.Args.Out(1), []uint64{9}) })
	})
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 1 {
		t.Fatalf("first call: %v, %d", rv, n)
	}
	if rv, _, _ := m.SlotList(0, true); rv != ck.CKR_DEVICE_REMOVED {
		t.Fatalf("call on a dropped connection: %v, want CKR_DEVICE_REMOVED", rv)
	}
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 1 {
		t.Fatalf("next call: %v, %d; want a new connection", rv, n)
	}
	// A daemon that restarts between calls: the idle connection is seen to
	// be stale and a new one carries the call. (A connection idle for less
	// than 20 ms is not checked: no daemon restarts that fast.)
	p.DropAll()
	time.Sleep(30 * time.Millisecond)
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 1 {
		t.Fatalf("after a restart: %v, %d", rv, n)
	}
	// Within 20 ms of its last call, a connection broken meanwhile fails
	// the call as a dead daemon would, and the next call dials again.
	p.DropAll()
	if rv, _, _ := m.SlotList(0, true); rv != ck.CKR_DEVICE_REMOVED {
		t.Fatalf("a just-used connection broken: %v, want CKR_DEVICE_REMOVED", rv)
	}
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 1 {
		t.Fatalf("the call after: %v, %d", rv, n)
	}
	h := p.Hellos()
	if len(h) != 4 {
		t.Fatalf("%d connections, want 4", len(h))
	}
	for _, x := range h[1:] {
		if x.AppID != h[0].AppID {
			t.Errorf("reconnection changed the application id")
		}
	}
}

func TestDaemonDownThenUp(t *testing.T) {
	m := module(t)
	p := Listen(t, func(q Req) Resp {
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(q.Args.Out(1), []uint64{1, 2}) })
	})
	p.Refuse(wire.StatusRefused)
	t.Setenv("HSMEMU_SOCKET", p.Path)
	if rv := m.Initialize(); rv != 0 {
		t.Fatal(rv)
	}
	defer m.Finalize()
	if rv, n, items := m.SlotList(4, false); rv != 0 || n != 1 || items[0] != 0 {
		t.Fatalf("refused: %v %d %v, want the offline slot 0", rv, n, items)
	}
	if rv, _ := m.OpenSession(0); rv != ck.CKR_TOKEN_NOT_PRESENT {
		t.Fatalf("refused: C_OpenSession %v, want CKR_TOKEN_NOT_PRESENT", rv)
	}
	p.Refuse(wire.StatusOK)
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 2 {
		t.Fatalf("accepted: %v %d, want the daemon's two slots", rv, n)
	}
}

// clone copies a template out of the request buffer it aliases.
func clone(attrs []wire.Attribute) []wire.Attribute {
	out := make([]wire.Attribute, len(attrs))
	for i, a := range attrs {
		out[i] = wire.Attribute{Type: a.Type, Value: bytes.Clone(a.Value), Null: a.Null, Nested: clone(a.Nested)}
	}
	return out
}

func TestTemplateAndMechanismEncoding(t *testing.T) {
	var mu sync.Mutex // the peer's goroutine writes, the test reads
	var tmpl []wire.Attribute
	var mechType, key uint64
	var gcm wire.GCMParams
	var gcmErr error
	m, _ := session(t, func(q Req) Resp {
		mu.Lock()
		defer mu.Unlock()
		switch q.Call.Name {
		case "C_CreateObject":
			tmpl = clone(q.Args.Template(1))
			return Reply(q.Call.Name, func(r *wire.Results) uint64 { r.Ulong(42); return 0 })
		case "C_EncryptInit":
			mech := q.Args.Mechanism(1)
			mechType, key = mech.Type, q.Args.Ulong(2)
			gcm, gcmErr = mech.Param.GCMParams()
			gcm.IV, gcm.AAD = bytes.Clone(gcm.IV), bytes.Clone(gcm.AAD)
			return Resp{RV: 0, Results: []byte{}}
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	rv, h := m.CreateObject(3, []Attr{
		{Type: ckaClass, Value: Ulong(4)},
		{Type: ckaToken, Value: []byte{1}},
		{Type: ckaLabel, Value: []byte("key")},
		{Type: ckaKeyType, Value: []byte{1, 2}}, // not a CK_ULONG: sent unchanged
		{Type: ckaAllowedMechanisms, Value: append(Ulong(0x1087), Ulong(0x2109)...)},
	}, ckaWrapTemplate, []Attr{{Type: ckaClass, Value: Ulong(3)}})
	if rv != 0 || h != 42 {
		t.Fatalf("C_CreateObject: %v, handle %d", rv, h)
	}
	iv := []byte("twelve bytes")
	if rv := m.EncryptInitGCM(3, iv, []byte("aad"), 128, 9); rv != 0 {
		t.Fatalf("C_EncryptInit: %v", rv)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []wire.Attribute{
		{Type: ckaClass, Value: be64(4)},
		{Type: ckaToken, Value: []byte{1}},
		{Type: ckaLabel, Value: []byte("key")},
		{Type: ckaKeyType, Value: []byte{1, 2}},
		{Type: ckaAllowedMechanisms, Value: append(be64(0x1087), be64(0x2109)...)},
	}
	if len(tmpl) != 6 {
		t.Fatalf("template of %d attributes, want 6", len(tmpl))
	}
	for i, w := range want {
		if tmpl[i].Type != w.Type || !bytes.Equal(tmpl[i].Value, w.Value) || tmpl[i].Null {
			t.Errorf("attribute %d: %#x %x, want %#x %x", i, tmpl[i].Type, tmpl[i].Value, w.Type, w.Value)
		}
	}
	if n := tmpl[5].Nested; tmpl[5].Type != ckaWrapTemplate || len(n) != 1 || !bytes.Equal(n[0].Value, be64(3)) {
		t.Errorf("wrap template: %+v", tmpl[5])
	}
	if gcmErr != nil || mechType != 0x1087 || !bytes.Equal(gcm.IV, iv) || !bytes.Equal(gcm.AAD, []byte("aad")) ||
		gcm.TagBits != 128 || gcm.IVBits != 96 || key != 9 {
		t.Errorf("GCM mechanism %#x key %d: %+v %v", mechType, key, gcm, gcmErr)
	}
}

func TestEncryptSizeQueryAndRandom(t *testing.T) {
	m, _ := session(t, func(q Req) Resp {
		switch q.Call.Name {
		case "C_Encrypt":
			data, _ := q.Args.Bytes(1)
			out := append([]byte("ct:"), data...)
			return Reply(q.Call.Name, func(r *wire.Results) uint64 { return r.OutBytes(q.Args.Out(2), out) })
		case "C_GenerateRandom":
			n := q.Args.Filled(1)
			return Reply(q.Call.Name, func(r *wire.Results) uint64 { r.Filled(bytes.Repeat([]byte{0xab}, int(n))); return 0 })
		case "C_FindObjects":
			return Reply(q.Call.Name, func(r *wire.Results) uint64 { r.Handles([]uint64{5, 6}); return 0 })
		}
		return Resp{RV: ck.CKR_FUNCTION_NOT_SUPPORTED}
	})
	if rv, n, _ := m.Encrypt(1, []byte("hello"), 0, true); rv != 0 || n != 8 {
		t.Fatalf("size query: %v, %d", rv, n)
	}
	if rv, n, _ := m.Encrypt(1, []byte("hello"), 4, false); rv != ck.CKR_BUFFER_TOO_SMALL || n != 8 {
		t.Fatalf("short: %v, %d", rv, n)
	}
	if rv, n, out := m.Encrypt(1, []byte("hello"), 10, false); rv != 0 || n != 8 || string(out[:8]) != "ct:hello" || out[8] != 0 {
		t.Fatalf("full: %v, %d, %q", rv, n, out)
	}
	if rv, b := m.GenerateRandom(1, 33); rv != 0 || !bytes.Equal(b, bytes.Repeat([]byte{0xab}, 33)) {
		t.Fatalf("C_GenerateRandom: %v %x", rv, b)
	}
	if rv, h := m.FindObjects(1, 4); rv != 0 || len(h) != 2 || h[0] != 5 || h[1] != 6 {
		t.Fatalf("C_FindObjects: %v %v", rv, h)
	}
}

// TestMalformedOutBytes: CKR_OK to a caller's buffer promises the data in
// it; a reply with only a length (as to a size query) is malformed, however
// the length compares with the buffer, and leaves the buffer and its length
// alone.
func TestMalformedOutBytes(t *testing.T) {
	var length atomic.Uint64
	m, _ := session(t, func(q Req) Resp {
		return Resp{RV: 0, Results: append(be64(length.Load()), 0xff, 0xff, 0xff, 0xff)}
	})
	for _, n := range []uint64{3, 16, 100} {
		length.Store(n)
		rv, got, out := m.Encrypt(1, []byte("hello"), 16, false)
		if rv != ck.CKR_DEVICE_ERROR || got != 16 || !bytes.Equal(out, make([]byte, 16)) {
			t.Errorf("length %d without data: rv %v, length %d, out %x; want CKR_DEVICE_ERROR, 16, untouched", n, rv, got, out)
		}
	}
}

func TestPoolManyThreads(t *testing.T) {
	m, p := session(t, func(q Req) Resp {
		return Reply("C_GenerateRandom", func(r *wire.Results) uint64 {
			r.Filled(bytes.Repeat([]byte{byte(q.Args.Ulong(0))}, int(q.Args.Filled(1))))
			return 0
		})
	})
	const threads, each = 16, 1000
	var wg sync.WaitGroup
	var failures atomic.Int32
	for g := 0; g < threads; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			runtime.LockOSThread()
			for i := 0; i < each; i++ {
				rv, b := m.GenerateRandom(uint64(g), 8)
				if rv != 0 || !bytes.Equal(b, bytes.Repeat([]byte{byte(g)}, 8)) {
					failures.Add(1)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d threads failed", f)
	}
	h := p.Hellos()
	if len(h) < 2 || len(h) > 32 {
		t.Errorf("%d connections for %d threads: want parallel, at most 32", len(h), threads)
	}
	for _, x := range h {
		if x.AppID != h[0].AppID || x.PID != h[0].PID {
			t.Fatalf("connections of one application with different ids")
		}
	}
	t.Logf("%d calls over %d connections", threads*each, len(h))
}

func TestFork(t *testing.T) {
	if raceEnabled {
		t.Skip("fork from a cgo call is not supported by the race detector's runtime")
	}
	m, p := session(t, func(q Req) Resp {
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(q.Args.Out(1), []uint64{1, 2, 3}) })
	})
	if rv, _, _ := m.SlotList(0, true); rv != 0 {
		t.Fatal(rv)
	}
	if st := m.ForkChild(); st != 0 {
		t.Fatalf("child failed steps %#b", st)
	}
	// The child closed its copy of our connection without shutting it
	// down: ours still works, and no new connection was needed.
	if rv, n, _ := m.SlotList(0, true); rv != 0 || n != 3 {
		t.Fatalf("parent after fork: %v %d", rv, n)
	}
	h := p.Hellos()
	if len(h) != 2 {
		t.Fatalf("%d connections, want ours and the child's", len(h))
	}
	if h[1].AppID == h[0].AppID || h[1].PID == h[0].PID {
		t.Errorf("the child reused the parent's application id or pid")
	}
}

func TestDiscovery(t *testing.T) {
	m := module(t)
	handler := func(q Req) Resp {
		return Reply("C_GetSlotList", func(r *wire.Results) uint64 { return r.OutUlongs(q.Args.Out(1), []uint64{1, 2}) })
	}
	reached := func(t *testing.T, p *Peer) bool {
		t.Helper()
		if rv := m.Initialize(); rv != 0 {
			t.Fatal(rv)
		}
		defer m.Finalize()
		rv, n, _ := m.SlotList(0, true)
		return rv == 0 && n == 2 && len(p.Hellos()) > 0
	}
	clear := func(t *testing.T) {
		for _, v := range []string{"HSMEMU_SOCKET", "HSMEMU_CONFIG", "XDG_CONFIG_HOME", "XDG_DATA_HOME"} {
			t.Setenv(v, "")
		}
		t.Setenv("HOME", t.TempDir())
		// Whatever this machine's /etc says stays out of the tests.
		t.Setenv("HSMEMU_SYSTEM_CONFIG", filepath.Join(t.TempDir(), "none.conf"))
	}
	writeConf := func(t *testing.T, path, body string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("HSMEMU_CONFIG", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		conf := filepath.Join(t.TempDir(), "m.conf")
		writeConf(t, conf, "# test\n\n  socket = "+p.Path+"  \ntimeout = 5\n")
		t.Setenv("HSMEMU_CONFIG", conf)
		if !reached(t, p) {
			t.Error("socket from HSMEMU_CONFIG not used")
		}
	})
	t.Run("HSMEMU_SOCKET wins over the file", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		conf := filepath.Join(t.TempDir(), "m.conf")
		writeConf(t, conf, "socket = /nonexistent/x.sock\n")
		t.Setenv("HSMEMU_CONFIG", conf)
		t.Setenv("HSMEMU_SOCKET", p.Path)
		if !reached(t, p) {
			t.Error("HSMEMU_SOCKET not used")
		}
	})
	t.Run("XDG_CONFIG_HOME", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		dir := t.TempDir()
		writeConf(t, filepath.Join(dir, "hsmemu", "module.conf"), "socket="+p.Path+"\n")
		t.Setenv("XDG_CONFIG_HOME", dir)
		if !reached(t, p) {
			t.Error("socket from $XDG_CONFIG_HOME/hsmemu/module.conf not used")
		}
	})
	t.Run("home config", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		writeConf(t, filepath.Join(os.Getenv("HOME"), ".config", "hsmemu", "module.conf"), "socket = "+p.Path+"\n")
		if !reached(t, p) {
			t.Error("socket from ~/.config/hsmemu/module.conf not used")
		}
	})
	t.Run("system config where the user has none", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		sys := filepath.Join(t.TempDir(), "module.conf")
		writeConf(t, sys, "socket = "+p.Path+"\n")
		t.Setenv("HSMEMU_SYSTEM_CONFIG", sys)
		if !reached(t, p) {
			t.Error("socket from the system config not used")
		}
	})
	t.Run("the user's config wins over the system's", func(t *testing.T) {
		clear(t)
		p := Listen(t, handler)
		sys := filepath.Join(t.TempDir(), "module.conf")
		writeConf(t, sys, "socket = /nonexistent/system.sock\n")
		t.Setenv("HSMEMU_SYSTEM_CONFIG", sys)
		writeConf(t, filepath.Join(os.Getenv("HOME"), ".config", "hsmemu", "module.conf"), "socket = "+p.Path+"\n")
		if !reached(t, p) {
			t.Error("the user's config lost to the system's")
		}
	})
	t.Run("XDG_DATA_HOME default", func(t *testing.T) {
		clear(t)
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "hsmemu"), 0o755); err != nil {
			t.Fatal(err)
		}
		p := listenAt(t, filepath.Join(dir, "hsmemu", "hsmemu.sock"), handler)
		t.Setenv("XDG_DATA_HOME", dir)
		if !reached(t, p) {
			t.Error("$XDG_DATA_HOME/hsmemu/hsmemu.sock not used")
		}
	})
}

// listenAt is Listen at a given path.
func listenAt(t *testing.T, path string, h Handler) *Peer {
	p := Listen(t, h)
	if err := os.Rename(p.Path, path); err != nil {
		t.Fatal(err)
	}
	p.Path = path
	return p
}

func TestCallTableCoverage(t *testing.T) {
	// Every call this file exercises is forwarded: a guard against the
	// table changing under the tests.
	for _, name := range []string{"C_GetSlotList", "C_GetTokenInfo", "C_GetAttributeValue", "C_CreateObject",
		"C_EncryptInit", "C_Encrypt", "C_GenerateRandom", "C_FindObjects"} {
		if c, ok := calls.ByName(name); !ok || c.Mode != calls.Forwarded {
			t.Errorf("%s is not forwarded", name)
		}
	}
}
