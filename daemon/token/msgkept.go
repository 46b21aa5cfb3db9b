package token

import (
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
)

// The size-query convention for messages (messages.go): an output
// measured and not delivered is kept for the same call to fetch, and
// the forms a message may continue in.

// kept returns the output a size query of the same call kept, if any; a
// message kept for another call is mixing forms: CKR_OPERATION_ACTIVE.
func (op *msgOp) kept(call callKind) (*message, bool, error) {
	m := op.cur
	if m == nil || !m.hasPend {
		return m, false, nil
	}
	if m.pendFor != call {
		return nil, false, ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	return m, true, nil
}

// keep records a measured output, not delivered, and the input it was
// measured over.
func (m *message) keep(call callKind, out []byte, outs map[string][]byte, in inputID) {
	m.pending, m.pendOuts, m.hasPend, m.pendFor, m.pendIn = out, outs, true, call, in
}

// keptOne is kept for a one-call message: m is the message a size query
// kept, kept says its output goes to this call; m without kept is that
// message to make anew, its follow-up having brought other input (id
// reads this call's input; it runs only when an output is kept).
func (op *msgOp) keptOne(id func() (inputID, error)) (m *message, kept bool, err error) {
	m, kept, err = op.kept(callOne)
	if err != nil || !kept {
		return nil, false, err
	}
	in, err := id()
	if err != nil {
		return nil, false, err
	}
	if m.pendIn.is(in) {
		return m, true, nil
	}
	m.dropKept()
	return m, false, nil
}

// keptNext is nextMessage for a Next that brings input: a kept output
// measured over other input is refused, the part it took being in the
// message already.
func (op *msgOp) keptNext(call callKind, in inputID) (*message, bool, error) {
	m, kept, err := op.nextMessage(call)
	if err == nil && kept && !m.pendIn.is(in) {
		return nil, false, ck.Errorf(ck.CKR_ARGUMENTS_BAD, "a part's output was measured over other input")
	}
	return m, kept, err
}

// collectPart is a C_SessionCancel with calls.CollectUpdate for a message
// process: the module handed over the output a part's size query (not
// the last part's) measured, so the part is delivered and the message
// goes on. s.mu is held.
func (s *session) collectPart(k msgKind) {
	op := s.msgOf(k)
	if op == nil || op.cur == nil || !op.cur.hasPend || op.cur.pendFor != callUpdate {
		return
	}
	m := op.cur
	m.dropKept()
	_ = op.settle() // it only gives back: never fails
}

// fits says whether an output of n bytes goes into the caller's buffer.
func fits(out wire.OutSpec, n int) bool { return out.Present && out.Capacity >= uint64(n) }

// nextCall is the call kind of a Next: a part, or the last one.
func nextCall(flags uint64) (callKind, error) {
	switch flags {
	case 0:
		return callUpdate, nil
	case ck.CKF_END_OF_MESSAGE:
		return callFinal, nil
	}
	return 0, ck.Error(ck.CKR_ARGUMENTS_BAD)
}

// nextMessage is the multi-part message a Next continues: its kept
// output's, or one begun by Begin.
func (op *msgOp) nextMessage(call callKind) (*message, bool, error) {
	m, kept, err := op.kept(call)
	switch {
	case err != nil:
		return nil, false, err
	case m == nil:
		return nil, false, ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	case !m.parts:
		return nil, false, ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	return m, kept, nil
}

// dropKept wipes and forgets the output a message kept for a size query
// (a decryption's is plaintext) and what its parameter was to get back.
func (m *message) dropKept() {
	wipe(m.pending)
	m.pending, m.pendOuts, m.hasPend = nil, nil, false
}
