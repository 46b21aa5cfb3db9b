package daemon

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/daemon/adminapi"
	"hsmemu/daemon/mech"
	"hsmemu/daemon/metrics"
	"hsmemu/daemon/token"
)

// scrape reads the daemon's metrics as a Prometheus server would.
func scrape(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("scrape does not parse: %v", err)
	}
	return fams
}

// value is the metric of fam whose labels include want (name=value
// pairs): a counter's or gauge's value, a histogram's count; 0 if none.
func value(fams map[string]*dto.MetricFamily, fam string, want ...string) float64 {
	f := fams[fam]
	if f == nil {
		return 0
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if have[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return 0
}

// syncBuf is a log destination the daemon's goroutines share.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines are the JSON log lines with msg.
func (s *syncBuf) lines(t *testing.T, msg string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(s.b.Bytes(), []byte("\n")) {
		var m map[string]any
		if len(l) == 0 {
			continue
		}
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("log line is not JSON: %s", l)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestMetrics makes real calls through the module's protocol and the
// admin connection and checks that the scraped counts move by exactly
// what was done, by function and CK_RV; and that a call's request id is
// in its log line and in its audit record.
func TestMetrics(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "hsd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	logs := &syncBuf{}
	d := &testDaemon{dir: dir, sock: filepath.Join(dir, "s"), metrics: metrics.New(),
		log: slog.New(slog.NewJSONHandler(logs, nil))}
	d.start(t, token.Config{MaxPINFailures: 2})
	cl := d.dial(t)
	slot := cl.NewToken("metered")
	h := cl.Open(slot, true)

	before := scrape(t, d.metrics)
	for range 3 {
		cl.Must(ck.CKR_OK, "C_GenerateRandom", U(h), Out(32))
	}
	cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin-1"))
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), AB(ck.CKA_ENCRYPT, true)), None())[3].Ulong
	for range 2 {
		cl.Must(ck.CKR_OK, "C_EncryptInit", U(h), gcmMech(), U(key))
		cl.Must(ck.CKR_OK, "C_Encrypt", U(h), S("sixteen bytes..."), Out(64))
	}
	cl.Must(ck.CKR_SESSION_HANDLE_INVALID, "C_GenerateRandom", U(h+1000), Out(32))
	cl.Must(ck.CKR_OK, "C_Logout", U(h))
	for range 2 {
		cl.Must(ck.CKR_PIN_INCORRECT, "C_Login", U(h), U(ck.CKU_USER), S("wrong-pin-2"))
	}
	adm := adminDial(t, d)
	var st adminapi.Status
	if err := adm.Call(adminapi.OpStatus, nil, &st); err != nil {
		t.Fatal(err)
	}
	if err := adm.Call("no.such.call", nil, nil); code(t, err) != adminapi.CodeBadRequest {
		t.Fatalf("an unknown call: %v", err)
	}
	if err := adm.Call(adminapi.OpTokenCreate, adminapi.TokenCreate{Label: "second", Tier: "standard", SOPIN: []byte(SOPIN)}, nil); err != nil {
		t.Fatal(err)
	}
	after := scrape(t, d.metrics)

	delta := func(fam string, labels ...string) float64 {
		return value(after, fam, labels...) - value(before, fam, labels...)
	}
	for _, c := range []struct {
		fam    string
		labels []string
		want   float64
	}{
		{"hsmemu_pkcs11_calls_total", []string{"function", "C_GenerateRandom", "rv", "CKR_OK"}, 3},
		{"hsmemu_pkcs11_calls_total", []string{"function", "C_GenerateRandom", "rv", "CKR_SESSION_HANDLE_INVALID"}, 1},
		{"hsmemu_pkcs11_calls_total", []string{"function", "C_Login", "rv", "CKR_PIN_INCORRECT"}, 3},
		{"hsmemu_pkcs11_calls_total", []string{"function", "C_Login", "rv", "CKR_OK"}, 1},
		{"hsmemu_pkcs11_calls_total", []string{"function", "C_GenerateKey", "rv", "CKR_OK"}, 1},
		{"hsmemu_pkcs11_call_duration_seconds", []string{"function", "C_GenerateRandom"}, 4},
		{"hsmemu_pkcs11_call_duration_seconds", []string{"function", "C_Login"}, 4},
		{"hsmemu_pkcs11_mechanism_call_duration_seconds", []string{"function", "C_GenerateKey", "mechanism", "CKM_AES_KEY_GEN"}, 1},
		{"hsmemu_pkcs11_mechanism_call_duration_seconds", []string{"function", "C_EncryptInit", "mechanism", "CKM_AES_GCM"}, 2},
		{"hsmemu_pkcs11_call_duration_seconds", []string{"function", "C_Encrypt"}, 2},
		{"hsmemu_pin_failures_total", nil, 3},
		{"hsmemu_pin_lockouts_total", nil, 1},
		{"hsmemu_audit_events_total", []string{"event", "login.failure"}, 3},
		{"hsmemu_audit_events_total", []string{"event", "key.generate"}, 1},
		{"hsmemu_admin_calls_total", []string{"op", "status", "code", "ok"}, 1},
		{"hsmemu_admin_calls_total", []string{"op", "unknown", "code", "bad-request"}, 1},
		{"hsmemu_admin_calls_total", []string{"op", "token.create", "code", "ok"}, 1},
		{"hsmemu_tamper_detections_total", nil, 0},
	} {
		if got := delta(c.fam, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.fam, c.labels, got, c.want)
		}
	}
	if _, ok := after["hsmemu_tamper_detections_total"]; !ok {
		t.Error("no hsmemu_tamper_detections_total")
	}
	for _, g := range []string{"hsmemu_applications", "hsmemu_sessions", "hsmemu_connections", "hsmemu_keystore_size_bytes", "hsmemu_audit_records"} {
		if v := value(after, g); v < 1 {
			t.Errorf("%s = %v", g, v)
		}
	}
	if delta("hsmemu_object_cache_hits_total")+delta("hsmemu_object_cache_misses_total") < 2 {
		t.Error("two opens of the key, and the object cache counted fewer")
	}
	if rec := value(after, "hsmemu_audit_records"); rec != float64(st.Audit.Records)+1 {
		t.Errorf("hsmemu_audit_records = %v, status said %d before one more", rec, st.Audit.Records)
	}

	// Request ids: the admin call's log line and its audit record carry
	// the same one; so do a PKCS#11 call's "audited" line and record.
	recs, err := d.st.Store.AuditRecords(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	byEvent := map[string][]string{}
	for _, r := range recs {
		byEvent[r.Event] = append(byEvent[r.Event], r.Detail["request_id"])
	}
	var createID string
	for _, l := range logs.lines(t, "admin call") {
		if l["op"] == "token.create" {
			createID, _ = l["request_id"].(string)
		}
	}
	if createID == "" || len(byEvent["token.create"]) != 2 || byEvent["token.create"][1] != createID {
		t.Errorf("token.create: logged with request id %q, audited with %q", createID, byEvent["token.create"])
	}
	audited := map[string]bool{}
	for _, l := range logs.lines(t, "audited") {
		if l["event"] == "login.failure" {
			audited[l["request_id"].(string)] = true
		}
	}
	ids := byEvent["login.failure"]
	if len(ids) != 3 || len(audited) != 3 {
		t.Fatalf("login.failure: records %q, log lines %v", ids, audited)
	}
	for _, id := range ids {
		if len(id) != 16 || !audited[id] {
			t.Errorf("login.failure record with request id %q, not in the log %v", id, audited)
		}
	}
	if lock := byEvent["pin.lockout"]; len(lock) != 1 || lock[0] != ids[2] {
		t.Errorf("the lockout's request id %q is not its call's, %q", lock, ids[2])
	}
	logs.mu.Lock()
	leaked := strings.Contains(logs.b.String(), "wrong-pin") || strings.Contains(logs.b.String(), UserPIN) || strings.Contains(logs.b.String(), SOPIN)
	logs.mu.Unlock()
	if leaked {
		t.Error("a PIN is in the daemon's log")
	}
}

// BenchmarkCallMetrics measures what metrics add to a served call: the
// server's call (Dispatch and its results) with and without them, for a
// call that does almost nothing (C_GenerateRandom of 32 bytes, from the
// engine's buffered generator), an AES-GCM encryption with a cached key
// (Init and the one-shot call), and an ECDSA P-256 signature.
//
//	go test -run - -bench CallMetrics -count 6 ./daemon/
func BenchmarkCallMetrics(b *testing.B) {
	d := startDaemon(b, token.Config{})
	d.metrics = metrics.New()
	id := NewApp()
	cl := d.dialAs(b, id)
	slot := cl.NewToken("bench")
	h := cl.Open(slot, true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	aes := cl.Must(ck.CKR_OK, "C_GenerateKey", U(h), M(ck.CKM_AES_KEY_GEN), T(AU(ck.CKA_VALUE_LEN, 32), AB(ck.CKA_TOKEN, true), AB(ck.CKA_ENCRYPT, true)), None())[3].Ulong
	ec := cl.Must(ck.CKR_OK, "C_GenerateKeyPair", U(h), M(ck.CKM_EC_KEY_PAIR_GEN),
		T(A(ck.CKA_EC_PARAMS, mech.ECParams("P-256"))), T(AB(ck.CKA_TOKEN, true), AB(ck.CKA_SIGN, true)), None(), None())[5].Ulong
	// The benchmark serves calls as the client's application, whose
	// sessions and login they use.
	app, ok := d.eng.Attach(token.AppID(id), int32(os.Getpid()), uint32(os.Getuid()))
	if !ok {
		b.Fatal("attach")
	}
	type step struct {
		name string
		vals []wire.Value
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"random32", []step{{"C_GenerateRandom", []wire.Value{U(h), Out(32)}}}},
		{"aes-gcm-1k", []step{{"C_EncryptInit", []wire.Value{U(h), gcmMech(), U(aes)}}, {"C_Encrypt", []wire.Value{U(h), B(make([]byte, 1024)), Out(2048)}}}},
		{"ecdsa-p256", []step{{"C_SignInit", []wire.Value{U(h), M(ck.CKM_ECDSA), U(ec)}}, {"C_Sign", []wire.Value{U(h), B(make([]byte, 32)), Out(128)}}}},
	}
	for _, c := range cases {
		type encoded struct {
			call *calls.Call
			body []byte
		}
		var enc []encoded
		for _, s := range c.steps {
			call, _ := calls.ByName(s.name)
			body, err := wire.EncodeArgs(call, s.vals)
			if err != nil {
				b.Fatal(err)
			}
			enc = append(enc, encoded{call, body})
		}
		for _, withMetrics := range []bool{false, true} {
			name := c.name + "/bare"
			if withMetrics {
				name = c.name + "/metrics"
			}
			b.Run(name, func(b *testing.B) {
				d.srv.metrics = nil
				if withMetrics {
					d.srv.metrics = d.metrics
				}
				var args wire.Args
				res := &wire.Results{}
				b.ReportAllocs()
				for b.Loop() {
					for _, e := range enc {
						if err := args.Decode(e.call, e.body); err != nil {
							b.Fatal(err)
						}
						if code, _, _ := d.srv.call(ctx, app, e.call, &args, res, false); code != ck.CKR_OK {
							b.Fatalf("%s: %s", e.call.Name, ck.Error(code))
						}
						args.Reset()
					}
				}
			})
		}
	}
}
