package keystore

import (
	"testing"

	"hsmemu/internal/reqid"
)

// TestStats: the cache's hits and misses and the audit records by event
// are counted, and a call's request id lands in its records' detail.
func TestStats(t *testing.T) {
	t.Parallel()
	s, path := newStore(t, Options{})
	ti := newToken(t, s, "stats")
	obj, err := s.Put(ctx, ti.UUID, keyAttrs(t, "pub", false), []byte("public object secret material..."))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = reopen(t, path, Options{})
	for range 3 {
		if _, err := s.Open(ctx, obj.ID); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.CacheMisses != 1 || st.CacheHits != 2 || st.CacheEntries != 1 {
		t.Fatalf("after a cold open and two warm ones: %+v", st)
	}

	rctx := reqid.With(ctx, "0123456789abcdef")
	detail := map[string]string{"role": "user"}
	for _, ev := range []string{"login.failure", "login.failure", "pin.lockout"} {
		if _, err := s.Audit(rctx, AuditActor{UID: 1}, ev, detail); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Audit(ctx, AuditActor{UID: 1}, "login.success", nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := detail["request_id"]; ok {
		t.Fatal("the caller's detail map was changed")
	}
	if a := s.Stats().Audited; a["login.failure"] != 2 || a["pin.lockout"] != 1 || a["login.success"] != 1 {
		t.Fatalf("audited: %v", a)
	}
	recs, err := s.AuditTail(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if recs[0].Detail["request_id"] != "0123456789abcdef" || recs[0].Detail["role"] != "user" {
		t.Fatalf("a record of the call: %v", recs[0].Detail)
	}
	if _, ok := recs[1].Detail["request_id"]; ok {
		t.Fatalf("a record with no request: %v", recs[1].Detail)
	}
	if rep, err := s.VerifyAudit(ctx); err != nil || !rep.OK {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
