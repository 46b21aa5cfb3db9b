package adminapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func frame(s string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(s))), s...)
}

// FuzzReadFrame feeds the daemon's side of an admin connection arbitrary
// bytes: every frame decodes or is refused with an error, never a panic,
// and no length is trusted beyond MaxFrame.
func FuzzReadFrame(f *testing.F) {
	f.Add(frame(`{"op":"token.show","args":{"label":"x"}}`))
	f.Add(frame(`{"op":"token.create","args":{"label":"x","tier":"premium","so_pin":"c28tcGlu"}}`))
	f.Add(frame(`{"op":"status"}`))
	f.Add(frame(`{"op":"audit.tail","args":{"n":1e400}}`))
	f.Add(frame(`{"op":"x"} {}`))
	f.Add(binary.BigEndian.AppendUint32(nil, MaxFrame+1))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			var req Request
			err := ReadFrame(r, &req)
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrFrame) {
					t.Fatalf("error %v is not ErrFrame", err)
				}
				return
			}
			if len(req.Args) == 0 {
				continue
			}
			// The daemon decodes the arguments into one of these.
			for _, v := range []any{&TokenCreate{}, &TokenRef{}, &TokenDelete{}, &PINChange{}, &PINReset{}, &PINUnlock{}, &AuditTail{}, &AuditRange{}, &TokenSet{}, &KeyRef{}, &KeyList{}, &KeyPurge{}, &KeyGenerate{}, &KeyImport{}, &SecretSet{}, &SecretGet{}, &SecretRef{}, &SecretList{}, &SecretPurge{}, &KeyRestore{}, &RotateToken{}, &RotateMasterBegin{}} {
				if err := DecodeJSON(req.Args, v); err != nil && !errors.Is(err, ErrFrame) {
					t.Fatalf("args error %v is not ErrFrame", err)
				}
			}
		}
	})
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := Request{Op: OpTokenShow, Args: []byte(`{"label":"a"}`)}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	var out Request
	if err := ReadFrame(&buf, &out); err != nil || out.Op != in.Op || string(out.Args) != string(in.Args) {
		t.Fatalf("round trip: %+v %v", out, err)
	}
	var ref TokenRef
	if err := DecodeJSON([]byte(`{"label":"a","extra":1}`), &ref); !errors.Is(err, ErrFrame) {
		t.Fatalf("unknown field: %v", err)
	}
	if err := DecodeJSON([]byte(`{"label":"a"}{"label":"b"}`), &ref); !errors.Is(err, ErrFrame) {
		t.Fatalf("trailing value: %v", err)
	}
	if err := ReadFrame(bytes.NewReader(binary.BigEndian.AppendUint32(nil, MaxFrame+1)), &out); !errors.Is(err, ErrFrame) {
		t.Fatalf("oversized: %v", err)
	}
	big := Request{Op: "x", Args: []byte(`"` + string(bytes.Repeat([]byte("a"), MaxFrame)) + `"`)}
	if err := WriteFrame(io.Discard, big); !errors.Is(err, ErrFrame) {
		t.Fatalf("oversized write: %v", err)
	}
}
