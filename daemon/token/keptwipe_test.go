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
