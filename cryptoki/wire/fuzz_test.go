package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"hsmemu/cryptoki/ck"

	"hsmemu/cryptoki/calls"
)

// The fuzz targets demand that whatever decodes re-encodes to the same
// bytes (so no two encodings mean the same thing, and nothing is silently
// dropped), that bad input is an error of the documented kind, and that
// nothing panics. Their seeds are the round-trip table.

func FuzzDecodeArgs(f *testing.F) {
	for _, tc := range argCases() {
		body, err := EncodeArgs(tc.call, tc.vals)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte{byte(tc.call.ID)}, body...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		c, ok := calls.ByID(uint32(data[0]))
		if !ok {
			return
		}
		body := data[1:]
		a, err := DecodeArgs(c, body)
		if err != nil {
			want := ErrMalformed
			if c.Mode != calls.Forwarded {
				want = ErrUnsupported
			}
			if !errors.Is(err, want) {
				t.Fatalf("%s: error %v is not %v", c.Name, err, want)
			}
			return
		}
		again, err := EncodeArgs(c, a.Values())
		if err != nil {
			t.Fatalf("%s: accepted arguments do not re-encode: %v", c.Name, err)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("%s: re-encoded\n%x\nfrom\n%x", c.Name, again, body)
		}
		touch(a)
	})
}

// touch reads every argument through its accessor, as the daemon would.
func touch(a *Args) {
	_ = a.String()
	for i, arg := range a.Call().Args {
		switch arg.Kind {
		case calls.Ulong:
			a.Ulong(i)
		case calls.Byte:
			a.Byte(i)
		case calls.Bytes:
			a.Bytes(i)
		case calls.Label:
			a.Label(i)
		case calls.Template:
			a.Template(i)
		case calls.Mechanism:
			p := &a.Mechanism(i).Param
			p.GCMParams()
			p.CTRParams()
			p.OAEPParams()
			p.PSSParams()
			p.ECDH1DeriveParams()
			p.RSAAESKeyWrapParams()
			p.EdDSAParams()
			p.HKDFParams()
			p.ChaCha20Params()
			p.ChaCha20Poly1305Params()
		case calls.OutBytes, calls.OutUlongs:
			a.Out(i)
		case calls.OutHandles:
			a.Max(i)
		case calls.OutFilled:
			a.Filled(i)
		case calls.AttrQuery:
			a.Query(i)
		}
	}
}

var fuzzRVs = []uint64{ck.CKR_OK, ck.CKR_BUFFER_TOO_SMALL, ck.CKR_ATTRIBUTE_SENSITIVE, ck.CKR_ATTRIBUTE_TYPE_INVALID, ck.CKR_GENERAL_ERROR}

func FuzzDecodeResults(f *testing.F) {
	for _, tc := range resultCases() {
		body, err := EncodeResults(tc.call, tc.vals)
		if err != nil {
			f.Fatal(err)
		}
		sel := 0
		for i, rv := range fuzzRVs {
			if rv == tc.rv {
				sel = i
			}
		}
		f.Add(append([]byte{byte(tc.call.ID), byte(sel)}, body...))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		c, ok := calls.ByID(uint32(data[0]))
		if !ok {
			return
		}
		rv := fuzzRVs[int(data[1])%len(fuzzRVs)]
		body := data[2:]
		vals, err := DecodeResults(c, rv, body)
		if err != nil {
			want := ErrMalformed
			if c.Mode != calls.Forwarded {
				want = ErrUnsupported
			}
			if !errors.Is(err, want) {
				t.Fatalf("%s: error %v is not %v", c.Name, err, want)
			}
			return
		}
		again, err := EncodeResults(c, vals)
		if err != nil {
			t.Fatalf("%s: accepted results do not re-encode: %v", c.Name, err)
		}
		if !bytes.Equal(again, body) {
			t.Fatalf("%s: re-encoded\n%x\nfrom\n%x", c.Name, again, body)
		}
		for _, v := range vals {
			_ = v.String()
		}
	})
}

// frameSeeds are streams of request frames from the round-trip table, and
// a few broken ones.
func frameSeeds(f *testing.F, reply bool) {
	var stream []byte
	for i, tc := range argCases() {
		body, err := EncodeArgs(tc.call, tc.vals)
		if err != nil {
			f.Fatal(err)
		}
		var frame []byte
		if reply {
			frame = AppendReply(nil, uint32(i), uint64(i%3), body)
			if i%5 == 0 {
				frame = AppendReply(nil, uint32(i), ck.CKR_PIN_INCORRECT, nil)
			}
		} else {
			frame = AppendRequest(nil, uint32(i), tc.call.ID, body)
		}
		if i%40 == 0 {
			f.Add(frame)
		}
		if len(stream) < 256 {
			stream = append(stream, frame...)
		}
	}
	f.Add(stream)
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3})
	f.Add([]byte{0, 0, 0, 13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2})
}

// checkStream reads frames until an error and checks that the frames read
// re-encode to the prefix of data they came from.
func checkStream(t *testing.T, data []byte, next func(r *bufio.Reader, buf []byte) ([]byte, []byte, error)) {
	r := bufio.NewReaderSize(bytes.NewReader(data), 16)
	buf := make([]byte, 0, len(data)%64) // small, to exercise growing
	var again []byte
	for {
		var frame []byte
		var err error
		frame, buf, err = next(r, buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error %v is neither io.EOF nor ErrFrame", err)
			}
			break
		}
		again = append(again, frame...)
	}
	if !bytes.HasPrefix(data, again) {
		t.Fatalf("frames re-encode to\n%x\nnot a prefix of\n%x", again, data)
	}
}

func FuzzReadRequest(f *testing.F) {
	frameSeeds(f, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkStream(t, data, func(r *bufio.Reader, buf []byte) ([]byte, []byte, error) {
			q, buf, err := ReadRequest(r, buf)
			if err != nil {
				return nil, buf, err
			}
			return AppendRequest(nil, q.ID, q.Call, q.Body), buf, nil
		})
	})
}

func FuzzReadReply(f *testing.F) {
	frameSeeds(f, true)
	f.Fuzz(func(t *testing.T, data []byte) {
		checkStream(t, data, func(r *bufio.Reader, buf []byte) ([]byte, []byte, error) {
			p, buf, err := ReadReply(r, buf)
			if err != nil {
				return nil, buf, err
			}
			return AppendReplyIdle(nil, p.ID, p.RV, p.Results, p.Idle), buf, nil
		})
	})
}
