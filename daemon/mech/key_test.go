package mech

import (
	"maps"
	"sync"
	"testing"

	"hsmemu/cryptoki/ck"
)

// testKey is a key as the engine hands it to a mechanism: its attributes
// and a memo, nothing else. The mechanisms' tests need no token, no
// keystore and no TPM.
type testKey struct {
	class, kt uint64
	attrs     map[uint64][]byte

	mu   sync.Mutex
	memo map[string]testMemo
}

type testMemo struct {
	v   any
	err error
}

func (k *testKey) Class() uint64   { return k.class }
func (k *testKey) KeyType() uint64 { return k.kt }

func (k *testKey) Attr(t uint64) ([]byte, bool) {
	v, ok := k.attrs[t]
	return v, ok
}

// Memoized is the engine's look-up ahead of Memo (memoized).
func (k *testKey) Memoized(kind string) (any, error, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	m, ok := k.memo[kind]
	return m.v, m.err, ok
}

func (k *testKey) Memo(kind string, parse func() (any, error)) (any, error) {
	k.mu.Lock()
	m, ok := k.memo[kind]
	k.mu.Unlock()
	if ok {
		return m.v, m.err
	}
	v, err := parse()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.memo == nil {
		k.memo = map[string]testMemo{}
	}
	k.memo[kind] = testMemo{v: v, err: err}
	return v, err
}

// testKeyObject is a key object of class and key type kt with attrs.
func testKeyObject(t testing.TB, class, kt uint64, attrs map[uint64][]byte) *testKey {
	t.Helper()
	m := maps.Clone(attrs)
	m[ck.CKA_CLASS] = ulong(class)
	m[ck.CKA_KEY_TYPE] = ulong(kt)
	return &testKey{class: class, kt: kt, attrs: m}
}

// testSecret is a secret key of key type kt with value.
func testSecret(t testing.TB, kt uint64, value []byte) *testKey {
	t.Helper()
	return testKeyObject(t, ck.CKO_SECRET_KEY, kt, map[uint64][]byte{ck.CKA_VALUE: value})
}

// testTable is a table for one test, closed at its end.
func testTable(t testing.TB) *Table {
	t.Helper()
	tb := New()
	t.Cleanup(tb.Close)
	return tb
}

// sharedTable is a table shared by the tests that only look mechanisms
// up, and mechanisms and legacyMechanisms its modern and legacy entries:
// its nonce fillers live as long as the test binary.
var (
	sharedTable      = New()
	mechanisms       = sharedTable.byType
	legacyMechanisms = sharedTable.WithLegacy().byType
)

func codeOf(err error) uint64 {
	c, _ := ck.RVOf(err)
	return c
}
