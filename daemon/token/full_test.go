package token

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// fullStore is a keystore on a filesystem that fills up: while full is
// set, its writes fail as the keystore's do then (daemon/chaos
// TestDiskFull fills a real one).
type fullStore struct {
	*keystore.Store
	full atomic.Bool
}

func (s *fullStore) refuse(what string) error {
	if s.full.Load() {
		return fmt.Errorf("%w (%s: database or disk is full)", keystore.ErrFull, what)
	}
	return nil
}

func (s *fullStore) PutAudited(ctx context.Context, token keystore.UUID, attrs keystore.Attributes, secret []byte, note func(keystore.UUID) keystore.AuditNote) (*keystore.Object, error) {
	if err := s.refuse("insert object"); err != nil {
		return nil, err
	}
	return s.Store.PutAudited(ctx, token, attrs, secret, note)
}

func (s *fullStore) SoftDeleteAudited(ctx context.Context, id keystore.ObjectID, note func(bool) keystore.AuditNote) (bool, error) {
	if err := s.refuse("delete object"); err != nil {
		return false, err
	}
	return s.Store.SoftDeleteAudited(ctx, id, note)
}

// syncBuffer is a log destination for a test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestFilesystemFull: a write the keystore refuses for want of space is
// CKR_DEVICE_MEMORY, said once in the log as a warning, not an internal
// error; reads and signatures go on, and writes work again once space
// returns.
func TestFilesystemFull(t *testing.T) {
	t.Parallel()
	d := startEngine(t, Config{})
	var log syncBuffer
	fs := &fullStore{Store: d.store}
	d.eng.Close()
	d.eng = New(fs, slog.New(slog.NewTextHandler(&log, nil)), Config{FailureDelay: -1})
	cl := d.dial(t)
	slot := cl.NewToken("full")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	hmacKey := func(token bool) []wire.Attribute {
		return []wire.Attribute{AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AU(ck.CKA_KEY_TYPE, ck.CKK_GENERIC_SECRET),
			AB(ck.CKA_TOKEN, token), A(ck.CKA_VALUE, bytes.Repeat([]byte{7}, 32))}
	}
	key := cl.Create(h, hmacKey(true)...)

	fs.full.Store(true)
	for range 3 {
		cl.Must(ck.CKR_DEVICE_MEMORY, "C_CreateObject", U(h), T(hmacKey(true)...), None())
		cl.Must(ck.CKR_DEVICE_MEMORY, "C_GenerateKey", U(h), M(ck.CKM_GENERIC_SECRET_KEY_GEN),
			T(AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AB(ck.CKA_TOKEN, true), AU(ck.CKA_VALUE_LEN, 32)), None())
		cl.Must(ck.CKR_DEVICE_MEMORY, "C_DestroyObject", U(h), U(key))
	}
	// Reads, signatures and session objects need no space.
	cl.Must(ck.CKR_OK, "C_SignInit", U(h), M(ck.CKM_SHA256_HMAC), U(key))
	cl.Must(ck.CKR_OK, "C_Sign", U(h), S("data"), Out(64))
	cl.Create(h, hmacKey(false)...)
	if got := cl.Find(h, AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), AB(ck.CKA_TOKEN, true)); len(got) != 1 {
		t.Fatalf("find on a full filesystem: %v", got)
	}
	out := log.String()
	warned := 0
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "filesystem is full") {
			warned++
		}
	}
	if warned != 1 {
		t.Errorf("want one warning that the filesystem is full, got:\n%s", out)
	}
	if strings.Contains(out, "level=ERROR") {
		t.Errorf("a full filesystem logged as an internal error:\n%s", out)
	}

	fs.full.Store(false)
	cl.Create(h, hmacKey(true)...)
	cl.Must(ck.CKR_OK, "C_DestroyObject", U(h), U(key))
}
