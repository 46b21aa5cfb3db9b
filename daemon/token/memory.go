package token

import (
	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/daemon/mech"
)

// What operations hold between calls, and the calls the daemon refuses
// before they reach the engine (docs/reliability.md, "Memory bounds").
//
// An operation holds memory between calls in two cases: a cipher that
// keeps its input for the Final (AES-GCM, ChaCha20-Poly1305, key wrap
// used to encrypt: a decryption must not release any plaintext before
// its tag is checked, and their output depends on the whole input), and
// an output kept after a size query for the call that fetches it. Both
// are charged to the engine's operation budget (Config.OpBudget) while
// held, and the first is bounded per operation (Config.MaxOpBuffer). An
// operation gives its charge back when it ends, however it ends: its
// Final, an error, C_SessionCancel, a logout, its session's close.

// holding returns the bytes op holds between calls now.
func (op *operation) holding() int64 {
	var n int64
	if b, ok := op.cipher.(mech.Buffering); ok {
		_, memory := b.Buffered()
		n += int64(memory)
	}
	if op.hasPend {
		n += int64(len(op.pending) + op.pendIn.held())
	}
	return n
}

// errNoMemory is the answer when the operation budget is spent.
var errNoMemory = ck.Errorf(ck.CKR_DEVICE_MEMORY, "the operations' memory budget is spent")

// reserve charges n bytes that op is about to keep, before it keeps them.
func (op *operation) reserve(n int) error {
	if !op.mem.TryAcquire(int64(n)) {
		return errNoMemory
	}
	op.charged += int64(n)
	return nil
}

// settle brings op's charge to what it holds: it gives back what it no
// longer holds, and takes what it holds beyond its charge (an output
// kept after a size query, the spare capacity of a growing buffer),
// CKR_DEVICE_MEMORY when the budget has no room for it.
func (op *operation) settle() error {
	switch want := op.holding(); {
	case want < op.charged:
		op.mem.Release(op.charged - want)
		op.charged = want
	case want > op.charged:
		if !op.mem.TryAcquire(want - op.charged) {
			return errNoMemory
		}
		op.charged = want
	}
	return nil
}

// endOp ends the session's operation of this kind, if any, and gives its
// charge back. The caller holds s.mu.
func (s *session) endOp(kind opKind) {
	if op := s.ops[kind]; op != nil {
		// Gone first, its charge given back, then wiped: a panic in the
		// cipher's Wipe leaves it ended all the same.
		s.ops[kind] = nil
		op.mem.Release(op.charged)
		op.charged = 0
		// An output kept and never delivered here (the module took it
		// from a prefetch and ends the operation) may be plaintext.
		op.dropKept()
		op.wipeCipher()
	}
}

// endOps ends every operation of a session that is closing.
func (s *session) endOps() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for kind := range s.ops {
		s.endOp(opKind(kind))
	}
	for k := range msgKinds {
		s.endMsg(k)
	}
	s.endFind()
}

// lenRange is the CK_RV for input of a length the operation cannot take:
// the plaintext's on encryption, the ciphertext's on decryption.
func lenRange(kind opKind) uint64 {
	if kind == opDecrypt {
		return ck.CKR_ENCRYPTED_DATA_LEN_RANGE
	}
	return ck.CKR_DATA_LEN_RANGE
}

// Refusal is why the daemon refused a request before decoding it.
type Refusal int

const (
	// TooLarge: the request is longer than its call can need
	// (wire.RequestBound with the daemon's data bound).
	TooLarge Refusal = iota + 1
	// NoMemory: the daemon had no memory for the request or its reply
	// within the wait its budget allows.
	NoMemory
)

// opOf maps the operations a call continues to the engine's kinds.
var opOf = map[calls.OpKinds]opKind{
	calls.OpEncrypt: opEncrypt,
	calls.OpDecrypt: opDecrypt,
	calls.OpDigest:  opDigest,
	calls.OpSign:    opSign,
	calls.OpVerify:  opVerify,
}

// msgOf maps the message-based processes a call continues to the
// engine's kinds.
var msgOf = map[calls.OpKinds]msgKind{
	calls.OpMessageEncrypt: msgEncrypt,
	calls.OpMessageDecrypt: msgDecrypt,
	calls.OpMessageSign:    msgSign,
	calls.OpMessageVerify:  msgVerify,
}

// Refuse answers a forwarded call that the daemon refused before decoding
// its arguments, for the reason why, and returns the CK_RV: the
// specification's answer to it for that call (calls.TooLarge) or
// CKR_DEVICE_MEMORY. As after any error, the operation the call would have
// continued on session h ends (for a call on a session; h is ignored
// otherwise); for a message-based call, its current message.
func (e *Engine) Refuse(app *App, c *calls.Call, h uint64, why Refusal) uint64 {
	rv := calls.TooLarge(c)
	switch {
	case rv == ck.CKR_FUNCTION_NOT_SUPPORTED:
		return rv
	case why == NoMemory:
		rv = ck.CKR_DEVICE_MEMORY
	}
	if cont := calls.RoleOf(c).Continues; cont != 0 && calls.OnSession(c) {
		if s, err := app.session(h); err == nil {
			s.endRefused(cont)
		}
	}
	return rv
}

// endRefused ends the operations and messages of the kinds in cont
// (calls.RoleOf's Continues). s.mu is released however it ends: the
// session's lock held after a panic (in a cipher's Wipe, say; the daemon
// serves on) would stop every later call on the session.
func (s *session) endRefused(cont calls.OpKinds) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, kind := range opOf {
		if cont&k != 0 {
			s.endOp(kind)
		}
	}
	for k, kind := range msgOf {
		if op := s.msgOf(kind); cont&k != 0 && op != nil {
			op.endMessage()
		}
	}
}

// OpMemory returns the bytes operations hold between calls now, and the
// budget's size.
func (e *Engine) OpMemory() (used, size int64) { return e.opMem.Used(), e.opMem.Size() }
