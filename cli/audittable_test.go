package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"hsmemu/daemon/adminapi"
)

func TestRecordTable(t *testing.T) {
	t.Parallel()
	var b bytes.Buffer
	printRecordTable(&b, []adminapi.AuditRecord{
		{Seq: 7, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Event: "key.generate",
			Actor:  adminapi.AuditActor{UID: 1000, PID: 42, Token: "signing", Role: "user"},
			Detail: map[string]string{"key_type": "0x1f", "label": "my key", "request_id": "0123456789abcdef", "mechanism": "0x1041", "class": "secret-key"}},
		{Seq: 8, Time: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC), Event: "tamper.detected", Actor: adminapi.AuditActor{UID: 0, PID: 1, Role: "daemon"},
			Detail: map[string]string{"key_type": "junk"}},
	})
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "SEQ  TIME") {
		t.Fatalf("table:\n%s", b.String())
	}
	want := `7    2026-01-02T03:04:05Z  key.generate     signing  user    1000  42   0123456789abcdef  class=secret-key key_type=AES label="my key" mechanism=ECDSA`
	if lines[1] != want {
		t.Errorf("row\n got %q\nwant %q", lines[1], want)
	}
	if !strings.Contains(lines[2], " -  ") || !strings.HasSuffix(lines[2], "key_type=junk") {
		t.Errorf("row %q", lines[2])
	}
	// Every column starts where its header does.
	if strings.Index(lines[0], "DETAIL") != strings.Index(lines[1], "class=") {
		t.Errorf("not aligned:\n%s", b.String())
	}
}

// TestRecordControlCharacters: a label, a token's label and a client
// certificate's name are the applications' to choose; printed raw, a
// newline in one would forge lines of `audit show` or `audit tail`
// ("hash: ..."), and an escape sequence would reach the administrator's
// terminal. Each is quoted when it holds a character that does not
// print.
func TestRecordControlCharacters(t *testing.T) {
	t.Parallel()
	evil := "x\nhash:      00\x1b[2J\tz"
	rec := adminapi.AuditRecord{Seq: 9, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Event: "key.generate",
		Actor:  adminapi.AuditActor{UID: 1000, PID: 42, Token: evil, Role: "user", Remote: evil},
		Detail: map[string]string{"label": evil, "class": "secret-key"}}
	var show, tail bytes.Buffer
	printRecord(&show, rec)
	printRecordTable(&tail, []adminapi.AuditRecord{rec})
	rec.Actor.Remote = ""
	printRecordTable(&tail, []adminapi.AuditRecord{rec})
	for name, out := range map[string]string{"show": show.String(), "tail": tail.String()} {
		if strings.ContainsAny(out, "\x1b\t") {
			t.Errorf("%s prints a control character:\n%q", name, out)
		}
		if strings.Contains(out, "\nhash:      00") {
			t.Errorf("%s has a forged line:\n%s", name, out)
		}
	}
	if n := strings.Count(show.String(), "\n"); n != 8 {
		t.Errorf("show: %d lines, want 8:\n%s", n, show.String())
	}
	if n := strings.Count(tail.String(), "\n"); n != 4 {
		t.Errorf("tail: %d lines, want 4:\n%s", n, tail.String())
	}
}

// TestListingsControlCharacters: the labels key, certificate and token
// listings print are the applications' to choose (C_SetAttributeValue,
// C_InitToken), as the audit records' are: quoted when they hold a
// character that does not print, so they neither forge a line nor drive
// the administrator's terminal.
func TestListingsControlCharacters(t *testing.T) {
	t.Parallel()
	evil := "x\nUUID  forged\x1b[2J\tz"
	k := adminapi.Key{UUID: "u1", Class: "secret-key", KeyType: &adminapi.CKConst{Name: "CKK_AES", Value: 0x1f}, Bits: 256, Label: evil, ID: "01"}
	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	k.DeletedAt, k.PurgeAfter = &when, &when
	ct := adminapi.Cert{UUID: "u2", Label: evil, Subject: "CN=" + evil, Issuer: "CN=" + evil, SANs: []string{evil}, KeyLabel: evil}
	tok := adminapi.Token{Slot: 1, Label: evil, Tier: "standard"}
	outs := map[string]func(w *bytes.Buffer){
		"key list":    func(w *bytes.Buffer) { printKeys(w, []adminapi.Key{k}, false) },
		"key deleted": func(w *bytes.Buffer) { printKeys(w, []adminapi.Key{k}, true) },
		"key show":    func(w *bytes.Buffer) { printKey(w, k) },
		"cert list":   func(w *bytes.Buffer) { printCerts(w, []adminapi.Cert{ct}) },
		"cert show":   func(w *bytes.Buffer) { printCert(w, ct) },
		"token list":  func(w *bytes.Buffer) { printTokens(w, []adminapi.Token{tok}) },
		"token show":  func(w *bytes.Buffer) { printToken(w, tok) },
	}
	for name, print := range outs {
		var b bytes.Buffer
		print(&b)
		out := b.String()
		if strings.ContainsAny(out, "\x1b\t") {
			t.Errorf("%s prints a control character:\n%q", name, out)
		}
		if strings.Contains(out, "\nUUID  forged") {
			t.Errorf("%s has a forged line:\n%s", name, out)
		}
	}
}
