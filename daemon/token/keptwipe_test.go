package token

import (
	"bytes"
	"testing"

	"hsmemu/internal/budget"
)

// An output the daemon kept after a size query and drops undelivered is
// wiped, as one the module collects is: a decryption's is plaintext.
// That is a follow-up with other input (the kept output goes), the
// operation or the message ended (the module's C_SessionCancel once it
// handed over a prefetched result, an error), and a message's buffered
// parts with it.
func TestKeptOutputWiped(t *testing.T) {
	t.Parallel()
	zero := func(what string, b []byte) {
		t.Helper()
		if !bytes.Equal(b, make([]byte, len(b))) {
			t.Errorf("%s: %q left", what, b)
		}
	}
	kept := func() []byte { return []byte("kept plaintext") }

	p := kept()
	op := &operation{pending: p, hasPend: true, pendFor: callUpdate, pendIn: keepInput([]byte("a")), mem: budget.New(1 << 20)}
	if _, err := op.output(callUpdate, []byte("b"), nil); err == nil {
		t.Fatal("an update measured over other input, with no way back: accepted")
	}
	zero("a follow-up with other input", p)

	p = kept()
	s := &session{}
	s.ops[opDecrypt] = &operation{pending: p, hasPend: true, pendFor: callOne, mem: budget.New(1 << 20)}
	s.endOp(opDecrypt)
	zero("the operation ended", p)

	p, parts := kept(), kept()
	mop := &msgOp{cur: &message{pending: p, in: parts, hasPend: true, pendFor: callOne, pendIn: inputOf([]byte("a"))}, mem: budget.New(1 << 20)}
	if _, kept, err := mop.keptOne(func() (inputID, error) { return inputOf([]byte("b")), nil }); kept || err != nil {
		t.Fatalf("a message's follow-up with other input: kept %v, %v", kept, err)
	}
	zero("a message's follow-up with other input", p)
	p = []byte("kept plaintext")
	mop.cur.pending, mop.cur.hasPend = p, true
	mop.endMessage()
	zero("the message ended", p)
	zero("the message's parts", parts)
}

// The input a size query was measured over is kept as a copy, past
// keepInputPooled bytes in a buffer reused from one operation to the
// next: dropping it wipes the buffer before another may take it, two
// inputs kept at once never share one, and each is charged its buffer.
func TestKeptInputPooled(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, keepInputPooled - 1, keepInputPooled, 512, 513, 1024, 1400, keepInputMax} {
		in := bytes.Repeat([]byte{0xa5}, n)
		a, b := keepInput(in), keepInput(in)
		if !a.is(in) || !b.is(in) || a.short == nil {
			t.Fatalf("%d bytes: the kept copies do not match their input", n)
		}
		if n > 0 && &a.short[0] == &b.short[0] {
			t.Fatalf("%d bytes: two kept inputs share their storage", n)
		}
		if n > 0 {
			in[0] ^= 1
			if a.is(in) {
				t.Fatalf("%d bytes: a kept input changed with the caller's", n)
			}
		}
		want := n
		if n >= keepInputPooled {
			want = 512
			for want < n {
				want *= 2
			}
		}
		if a.held() != want {
			t.Errorf("%d bytes: charged %d, want %d", n, a.held(), want)
		}
		storage := a.short
		if a.buf != nil {
			storage = (*a.buf)[:cap(*a.buf)]
		}
		a.drop()
		if !bytes.Equal(storage, make([]byte, len(storage))) {
			t.Errorf("%d bytes: a dropped input left its bytes", n)
		}
		b.drop()
	}
	long := keepInput(make([]byte, keepInputMax+1))
	if long.short != nil || long.buf != nil || long.held() != 0 {
		t.Errorf("an input past keepInputMax is kept as a copy (%d bytes)", long.held())
	}
}
