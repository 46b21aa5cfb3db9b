package token

import (
	"context"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
	"hsmemu/internal/budget"
)

// Message-based operations (PKCS#11 3.0, "Message-based encryption
// functions", "... decryption ...", "... signing and MACing ...",
// "... verifying signatures and MACs"). A process runs from
// C_MessageEncryptInit to C_MessageEncryptFinal over many messages, each
// in one call (C_EncryptMessage) or in parts (C_EncryptMessageBegin, then
// C_EncryptMessageNext until CKF_END_OF_MESSAGE). The rules, once for the
// four kinds (docs/mechanisms.md, "Message-based operations"):
//   - a session has at most one process of each kind, beside the
//     operations of the single- and multi-part functions, which are other
//     kinds; an Init while one runs is CKR_OPERATION_ACTIVE;
//   - every error ends the current message and never the process, as the
//     specification says of C_EncryptMessageNext ("terminates the current
//     message encryption operation"); the process ends with its Final, an
//     Init with no mechanism, C_SessionCancel, the session, or (for a
//     private key) the login;
//   - the size-query convention holds per message: a NULL output buffer or
//     a short one keeps the message, its output computed once and kept for
//     the same call to fetch with the same input; a one-call message
//     (C_EncryptMessage, C_DecryptMessage, C_SignMessage) whose follow-up
//     brings other input is made anew over it (an encryption with an IV
//     of the token's takes a new IV: an IV never sees two inputs), and a
//     Next whose follow-up brings other input is refused with
//     CKR_ARGUMENTS_BAD, since its part is in the message already;
//   - the forms do not mix: C_EncryptMessage or Begin while a message is in
//     progress, a Next without a Begin's message, or a Final while a
//     message is in progress, are CKR_OPERATION_ACTIVE (or
//     CKR_OPERATION_NOT_INITIALIZED for a Next with none), which ends that
//     message.

type msgKind int

const (
	msgEncrypt msgKind = iota
	msgDecrypt
	msgSign
	msgVerify
	msgKinds
)

var (
	msgFunc       = [msgKinds]mech.Func{mech.MessageEncrypt, mech.MessageDecrypt, mech.MessageSign, mech.MessageVerify}
	msgUsage      = [msgKinds]uint64{ck.CKA_ENCRYPT, ck.CKA_DECRYPT, ck.CKA_SIGN, ck.CKA_VERIFY}
	msgCancelFlag = [msgKinds]uint64{ck.CKF_MESSAGE_ENCRYPT, ck.CKF_MESSAGE_DECRYPT, ck.CKF_MESSAGE_SIGN, ck.CKF_MESSAGE_VERIFY}
)

// msgOp is a message-based process.
type msgOp struct {
	m      *mech.Mechanism
	wm     wire.Mechanism // the Init's, kept whole: each message's signature starts from it
	key    *Object
	cipher mech.MsgCipher // encryption, decryption
	ivs    *ivCounter     // encryption with an AES key: its IV counter
	// wantsAuth: the key has CKA_ALWAYS_AUTHENTICATE, so each message
	// wants the user's PIN first (C_Login, CKU_CONTEXT_SPECIFIC);
	// needAuth: the next message is still waiting for it.
	wantsAuth, needAuth bool
	// authAt is when the wait for the PIN began (contextLogin), on the
	// session's clock.
	authAt  uint64
	clock   *authClock
	private bool // the key is private: the process ends at logout
	cur     *message
	// mem is the engine's operation budget, and charged what this
	// process's message holds of it between calls (memory.go).
	mem     *budget.Budget
	charged int64
}

// message is the message in progress.
type message struct {
	parts  bool // begun by Begin: Next continues it
	mp     *mech.MsgParams
	iv     []byte
	aad    []byte
	in     []byte // an AEAD's parts so far
	signer mech.SignOp
	// The size-query convention: an output measured and not delivered,
	// with what the parameter gets back with it, for the call that
	// measured it.
	pending  []byte
	pendOuts map[string][]byte
	hasPend  bool
	pendFor  callKind
	pendIn   inputID // what the kept output was measured over
}

// msgOf returns the session's process of kind k, or nil. s.mu is held.
func (s *session) msgOf(k msgKind) *msgOp {
	if s.msgs == nil {
		return nil
	}
	return s.msgs[k]
}

// msgInit is C_MessageEncryptInit, C_MessageDecryptInit,
// C_MessageSignInit and C_MessageVerifyInit. An AEAD's parameter at Init,
// if any (the specification's own example passes its message parameter),
// is not used: each message brings its own.
func (e *Engine) msgInit(ctx context.Context, app *App, h uint64, k msgKind, wm *wire.Mechanism, keyHandle uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	active := s.msgOf(k) != nil
	s.mu.Unlock()
	if active {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	mechs, err := e.mechsOf(ctx, s)
	if err != nil {
		return err
	}
	m, ok := mechs.Get(wm.Type)
	if !ok || !m.Does(msgFunc[k]) {
		return ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	ref, key, err := e.useKeyRef(ctx, app, s, keyHandle, m, wm.Type, msgUsage[k])
	if err != nil {
		return err
	}
	op := &msgOp{m: m, key: key, private: key.Bool(ck.CKA_PRIVATE), wantsAuth: key.needsContextLogin(), mem: e.opMem}
	op.needAuth = op.wantsAuth
	switch k {
	case msgEncrypt, msgDecrypt:
		if op.cipher, err = m.MessageCipher(key, k == msgEncrypt); err != nil {
			return err
		}
		if k == msgEncrypt && hasIVCounter(key) {
			if op.ivs, err = e.ivCounterOf(ctx, app, ref, key); err != nil {
				return err
			}
		}
	case msgSign, msgVerify:
		// The parameter is checked now, as C_SignInit would, and kept
		// for the messages' signatures.
		op.wm = cloneMechanism(wm)
		if _, err := op.signer(k); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.msgOf(k) != nil {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	if s.msgs == nil {
		s.msgs = new([msgKinds]*msgOp)
	}
	op.clock = &s.auth
	if op.needAuth {
		op.authAt = s.auth.tick()
	}
	s.msgs[k] = op
	return nil
}

// signer starts one message's signature or verification.
func (op *msgOp) signer(k msgKind) (mech.SignOp, error) {
	if k == msgSign {
		return op.m.Sign(op.key, &op.wm)
	}
	return op.m.Verify(op.key, &op.wm)
}

// withMsg runs f on the session's process of kind k. f says whether the
// current message ends; an error ends it too, never the process. f's
// error is the call's; a CKR_BUFFER_TOO_SMALL that keeps the message is
// returned through code instead. What the message keeps for its next
// call is charged to the operation budget; no room ends it
// (CKR_DEVICE_MEMORY).
func withMsg(app *App, h uint64, k msgKind, f func(op *msgOp) (end bool, err error)) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.msgOf(k)
	if op == nil {
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	// A panic in f ends the message, as an error would (withOp).
	defer endOnPanic(op.endMessage)
	end, err := f(op)
	if end || err != nil {
		op.endMessage()
	} else if err = op.settle(); err != nil {
		op.endMessage()
	}
	return err
}

// start begins a message: none may be in progress (mixing forms ends the
// one that is), and a key that wants its PIN for each use must have had
// it.
func (op *msgOp) start(parts bool) (*message, error) {
	if op.cur != nil {
		return nil, ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	if op.needAuth {
		return nil, ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
	}
	op.needAuth = op.wantsAuth // this message takes the login given
	if op.needAuth {
		op.authAt = op.clock.tick()
	}
	op.cur = &message{parts: parts}
	return op.cur, nil
}

// messageFinal is C_MessageEncryptFinal and kin: the process ends, unless
// a message is in progress, which is CKR_OPERATION_ACTIVE and ends that
// message (a second Final then ends the process).
func messageFinal(app *App, h uint64, k msgKind) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.msgOf(k)
	switch {
	case op == nil:
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	case op.cur != nil:
		op.endMessage()
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	s.endMsg(k)
	return nil
}

// cloneMechanism copies a mechanism out of the request it aliases.
func cloneMechanism(wm *wire.Mechanism) wire.Mechanism {
	c := *wm
	c.Param.Bytes = cloneBytes(wm.Param.Bytes)
	c.Param.Fields = cloneFields(wm.Param.Fields)
	return c
}

func cloneFields(fs []wire.FieldValue) []wire.FieldValue {
	if fs == nil {
		return nil
	}
	out := make([]wire.FieldValue, len(fs))
	for i, f := range fs {
		f.Bytes = cloneBytes(f.Bytes)
		f.Fields = cloneFields(f.Fields)
		out[i] = f
	}
	return out
}

func cloneBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// What a message holds between calls (memory.go): its buffered parts, its
// associated data, an output kept after a size query.

// holding returns the bytes op's message holds now.
func (op *msgOp) holding() int64 {
	m := op.cur
	if m == nil {
		return 0
	}
	n := int64(cap(m.in)) + int64(len(m.aad))
	if m.hasPend {
		n += int64(len(m.pending))
	}
	return n
}

// reserve charges n bytes that op's message is about to keep.
func (op *msgOp) reserve(n int) error {
	if !op.mem.TryAcquire(int64(n)) {
		return errNoMemory
	}
	op.charged += int64(n)
	return nil
}

// settle brings op's charge to what its message holds, as
// operation.settle does.
func (op *msgOp) settle() error {
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

// endMessage ends op's current message and gives back its charge.
func (op *msgOp) endMessage() {
	if m := op.cur; m != nil {
		// What it kept (a prefetched output the module took, a
		// decryption's plaintext) and the parts it buffered.
		m.dropKept()
		wipe(m.in)
		m.in = nil
	}
	op.cur = nil
	op.mem.Release(op.charged)
	op.charged = 0
}

// endMsg ends the session's process of kind k, if any. s.mu is held.
func (s *session) endMsg(k msgKind) {
	if op := s.msgOf(k); op != nil {
		op.endMessage()
		s.msgs[k] = nil
	}
}
