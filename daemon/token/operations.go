package token

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"sync"

	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
	"hsmemu/internal/budget"
)

// Operations in sessions. A session holds at most one operation of each
// kind. The rules of the specification, kept here once for every
// mechanism:
//   - an Init while one is active is CKR_OPERATION_ACTIVE;
//   - an error ends the operation, except CKR_BUFFER_TOO_SMALL and a
//     size query (NULL output), which keep it alive with its output kept,
//     so the second call returns exactly what the first one measured when
//     it brings the same input; a single-part call that brings other
//     input is performed on that input from the state after the Init (a
//     size query only returns a length, 5.2), and an Update that brings
//     other input is performed on it from the state before the Update
//     that measured (mech.Rewinder), or, for a cipher that cannot go
//     back, refused (CKR_ARGUMENTS_BAD, which ends it);
//   - an Update after a Final or a single-part call that was only
//     measured goes on from the state before that call (resume): the
//     operation is still in progress, and the query took nothing in;
//   - the single-part call and the Final end it.

type opKind int

const (
	opEncrypt opKind = iota
	opDecrypt
	opDigest
	opSign
	opVerify
	// opVerifySignature is a verification begun by C_VerifySignatureInit
	// (PKCS#11 3.2), which takes the signature first: a kind of its own,
	// beside a C_VerifyInit one.
	opVerifySignature
	opKinds
)

// opKindsMatch: opKind i is bit i of calls.OpKinds, which SessionIdleBut
// relies on.
var _ = [1]int{}[int(calls.OpEncrypt>>opEncrypt)+int(calls.OpDecrypt>>opDecrypt)+int(calls.OpDigest>>opDigest)+
	int(calls.OpSign>>opSign)+int(calls.OpVerify>>opVerify)-5]

// operation is one operation in progress.
type operation struct {
	mech    uint64
	cipher  mech.CipherOp
	signer  mech.SignOp
	digest  mech.DigestOp
	pending []byte // output measured by a size query, not yet delivered
	hasPend bool
	pendFor callKind  // which call measured the kept output
	pendIn  keptInput // the input the kept output was measured over
	// What the Init took (restart): the operation's kind, the
	// mechanism, its parameter (a copy) and the key (nil for a digest).
	kind  opKind
	m     *mech.Mechanism
	wm    wire.Mechanism
	key   *Object
	parts bool // Update was called: the single-part call is refused
	// needAuth: the key has CKA_ALWAYS_AUTHENTICATE, and the user has not
	// yet given the PIN for this operation (C_Login, CKU_CONTEXT_SPECIFIC);
	// authAt: when it began to wait, on the session's clock.
	needAuth bool
	authAt   uint64
	// sig is the signature C_VerifySignatureInit gave.
	sig []byte
	// private: the key is private; the operation ends at logout.
	private bool
	// mem is the engine's operation budget, and charged what this
	// operation has taken of it (memory.go).
	mem     *budget.Budget
	charged int64
}

// endPrivateOps ends the session's operations on private keys, message-
// based processes included.
func (s *session) endPrivateOps() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, op := range s.ops {
		if op != nil && op.private {
			s.endOp(opKind(i))
		}
	}
	if s.msgs != nil {
		for i, op := range s.msgs {
			if op != nil && op.private {
				s.endMsg(msgKind(i))
			}
		}
	}
}

// funcOf is what a mechanism must do for each kind of operation.
var funcOf = [opKinds]mech.Func{
	opEncrypt: mech.Encrypt,
	opDecrypt: mech.Decrypt,
	opDigest:  mech.Digest,
	opSign:    mech.Sign,
	opVerify:  mech.Verify,

	opVerifySignature: mech.Verify,
}

// cancelFlag is the C_SessionCancel flag that names each kind of operation.
var cancelFlag = [opKinds]uint64{
	opEncrypt: ck.CKF_ENCRYPT,
	opDecrypt: ck.CKF_DECRYPT,
	opDigest:  ck.CKF_DIGEST,
	opSign:    ck.CKF_SIGN,
	opVerify:  ck.CKF_VERIFY,

	opVerifySignature: ck.CKF_VERIFY,
}

// sessionCancel is C_SessionCancel: it ends the session's operations the
// flags name (CKF_ENCRYPT, ..., CKF_MESSAGE_ENCRYPT, ..., CKF_FIND_OBJECTS).
// A flag for an operation not in progress, or one no mechanism here has
// (recovery), is ignored, as the specification says; so nothing ever
// fails to cancel. The module sends it too when it refuses a call's
// arguments itself (an error ends the operation, 5.2; for a message call,
// the current message: calls.CancelCurrentMessage) and for an Init given
// no mechanism (3.0); calls.CancelVerifySignature ends only the
// verification C_VerifySignatureInit began, which CKF_VERIFY ends with
// C_VerifyInit's unless calls.VerifyInitOnly says otherwise.
func (app *App) sessionCancel(h, flags uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if flags&calls.CollectUpdate != 0 {
		for kind, f := range cancelFlag {
			if (flags&calls.CollectKinds)>>32&f != 0 {
				s.collect(opKind(kind))
			}
		}
		for kind, f := range msgCancelFlag {
			if (flags&calls.CollectKinds)>>32&f != 0 {
				s.collectPart(msgKind(kind))
			}
		}
		flags &^= calls.CollectUpdate | calls.CollectKinds
	}
	for kind, f := range cancelFlag {
		if flags&f != 0 && (opKind(kind) != opVerifySignature || flags&calls.VerifyInitOnly == 0) {
			s.endOp(opKind(kind))
		}
	}
	if s.msgs != nil {
		for kind, f := range msgCancelFlag {
			switch op := s.msgs[kind]; {
			case op == nil || flags&f == 0:
			case flags&calls.CancelCurrentMessage != 0:
				op.endMessage()
			default:
				s.endMsg(msgKind(kind))
			}
		}
	}
	if flags&ck.CKF_FIND_OBJECTS != 0 {
		s.endFind()
	}
	if flags&calls.CancelVerifySignature != 0 {
		s.endOp(opVerifySignature)
	}
	return nil
}

// usage is the attribute a key needs for each kind of operation.
var usage = [opKinds]uint64{
	opEncrypt: ck.CKA_ENCRYPT,
	opDecrypt: ck.CKA_DECRYPT,
	opSign:    ck.CKA_SIGN,
	opVerify:  ck.CKA_VERIFY,

	opVerifySignature: ck.CKA_VERIFY,
}

// needsContextLogin reports a private key that wants the PIN again for
// each use: only operations started with an Init can take that login.
func (o *Object) needsContextLogin() bool {
	return o.Class() == ck.CKO_PRIVATE_KEY && o.Bool(ck.CKA_ALWAYS_AUTHENTICATE)
}

// allows checks CKA_ALLOWED_MECHANISMS.
func (o *Object) allows(typ uint64) bool {
	v, ok := o.attrs.Get(ck.CKA_ALLOWED_MECHANISMS)
	if !ok || len(v) == 0 {
		return true
	}
	for i := 0; i+8 <= len(v); i += 8 {
		if ulongOf(v[i:i+8]) == typ {
			return true
		}
	}
	return false
}

// useKey resolves a key handle for an operation with mechanism m: the
// object must be a key of a type m takes, permitted to do it.
func (e *Engine) useKey(ctx context.Context, app *App, s *session, h uint64, m *mech.Mechanism, typ uint64, need uint64) (*Object, error) {
	_, o, err := e.useKeyRef(ctx, app, s, h, m, typ, need)
	return o, err
}

// useKeyRef is useKey with the key's handle entry.
func (e *Engine) useKeyRef(ctx context.Context, app *App, s *session, h uint64, m *mech.Mechanism, typ uint64, need uint64) (*handle, *Object, error) {
	ref, o, err := e.resolve(ctx, app, s, h)
	if err != nil {
		if c, _ := rvOf(err); c == ck.CKR_OBJECT_HANDLE_INVALID {
			return nil, nil, ck.Error(ck.CKR_KEY_HANDLE_INVALID)
		}
		return nil, nil, err
	}
	if classMask(o.Class())&mKeys == 0 || !m.Takes(o.KeyType()) {
		return nil, nil, ck.Error(ck.CKR_KEY_TYPE_INCONSISTENT)
	}
	if need != 0 && !o.Bool(need) {
		return nil, nil, ck.Error(ck.CKR_KEY_FUNCTION_NOT_PERMITTED)
	}
	if !o.allows(typ) {
		return nil, nil, ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	return ref, o, nil
}

// opInit starts an operation of the given kind with a mechanism and,
// except for digests, a key.
func (e *Engine) opInit(ctx context.Context, app *App, h uint64, kind opKind, wm *wire.Mechanism, keyHandle uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	active := s.ops[kind] != nil
	s.mu.Unlock()
	if active {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	mechs, err := e.mechsOf(ctx, s)
	if err != nil {
		return err
	}
	m, ok := mechs.Get(wm.Type)
	if !ok || !m.Does(funcOf[kind]) {
		return ck.Error(ck.CKR_MECHANISM_INVALID)
	}
	op := &operation{mech: wm.Type, mem: e.opMem, kind: kind, m: m}
	if kind != opDigest {
		k, err := e.useKey(ctx, app, s, keyHandle, m, wm.Type, usage[kind])
		if err != nil {
			return err
		}
		// The operation keeps the key it took, as its state does: a key
		// destroyed meanwhile changes neither.
		op.key = k
		op.needAuth = k.needsContextLogin()
		op.private = k.Bool(ck.CKA_PRIVATE)
	}
	// The request's parameter is not the daemon's to keep: the restart
	// takes a copy.
	op.wm = cloneMechanism(wm)
	if err := op.restart(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ops[kind] != nil {
		return ck.Error(ck.CKR_OPERATION_ACTIVE)
	}
	if op.needAuth {
		op.authAt = s.auth.tick()
	}
	s.ops[kind] = op
	return nil
}

// restart makes the operation's state anew as after the Init, from what
// the Init took: a single-part call that brings other input than its
// size query is performed on it.
func (op *operation) restart() (err error) {
	switch op.kind {
	case opDigest:
		op.digest, err = op.m.Digest(&op.wm)
	case opEncrypt:
		op.wipeCipher()
		op.cipher, err = op.m.Encrypt(op.key, &op.wm)
	case opDecrypt:
		op.wipeCipher()
		op.cipher, err = op.m.Decrypt(op.key, &op.wm)
	case opSign:
		op.signer, err = op.m.Sign(op.key, &op.wm)
	case opVerify, opVerifySignature:
		op.signer, err = op.m.Verify(op.key, &op.wm)
	}
	return err
}

// wipeCipher clears what the cipher keeps of its input (mech.Wiper):
// the operation is over, or made anew.
func (op *operation) wipeCipher() {
	if w, ok := op.cipher.(mech.Wiper); ok {
		w.Wipe()
	}
}

// withOp runs f on the session's operation of the given kind, ending the
// operation when f says so or fails.
func withOp(app *App, h uint64, kind opKind, f func(op *operation) (end bool, err error)) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.ops[kind]
	if op == nil {
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	// A panic in f (a bug, or a library's on hostile input) is answered
	// CKR_GENERAL_ERROR (daemon/requests.go, Server.call), which ends the
	// operation as any other error does: its state is whatever the panic
	// left of it, and its charge goes back.
	defer endOnPanic(func() { s.endOp(kind) })
	if op.needAuth {
		// The key wants its PIN again, for this operation, first.
		s.endOp(kind)
		return ck.Error(ck.CKR_USER_NOT_LOGGED_IN)
	}
	end, err := f(op)
	if !end && err == nil {
		// What the operation keeps for its next call is charged to the
		// operation budget; no room ends it, as any error does.
		err = op.settle()
	}
	if end || err != nil {
		s.endOp(kind)
	}
	return err
}

// endOnPanic, deferred, calls end while a panic passes, and lets it go
// on.
func endOnPanic(end func()) {
	if p := recover(); p != nil {
		end()
		panic(p)
	}
}

// authClock orders, in a session, the waits for a context-specific
// login; it is read and moved under the session's lock.
type authClock struct{ now uint64 }

func (c *authClock) tick() uint64 {
	c.now++
	return c.now
}

// contextLogin clears the need for the PIN of the session's operation on
// a CKA_ALWAYS_AUTHENTICATE key that began to wait last (its Init, or a
// message process's last message), once check has accepted the PIN. One
// PIN is one use: the key's owner gives it "for each use (sign or
// decrypt)" (PKCS#11 v3.0, 4.9, CKA_ALWAYS_AUTHENTICATE), so another
// operation waiting beside it still wants its own. The session's lock is
// not held during the check, which waits on the token's login lock.
func contextLogin(s *session, check func() error) error {
	s.mu.Lock()
	var need *bool
	var last uint64
	wait := func(waiting *bool, at uint64) {
		if *waiting && (need == nil || at > last) {
			need, last = waiting, at
		}
	}
	for _, op := range s.ops {
		if op != nil {
			wait(&op.needAuth, op.authAt)
		}
	}
	if s.msgs != nil {
		for _, op := range s.msgs {
			if op != nil {
				wait(&op.needAuth, op.authAt)
			}
		}
	}
	s.mu.Unlock()
	if need == nil {
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	if err := check(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	*need = false
	return nil
}

// deliver applies the size-query convention to an output: it keeps the
// output while the caller only measured it, and reports whether the caller
// got it (which ends a single-part call or a Final).
func deliver(op *operation, out wire.OutSpec, data []byte, r *wire.Results) (delivered bool, code uint64) {
	code = r.OutBytes(out, data)
	if code == ck.CKR_OK && out.Present {
		op.pending, op.hasPend = nil, false
		op.pendIn.drop()
		return true, code
	}
	op.pending, op.hasPend = data, true
	return false, code
}

// callKind is the call that measured an output: the kept output goes only
// to the same call again.
type callKind int

const (
	callOne callKind = iota + 1
	callUpdate
	callFinal
)

// inputID identifies the input a kept output was measured over.
type inputID struct {
	n   int
	sum [sha256.Size]byte
}

// inputOf identifies an input of one or more parts (a message's
// associated data and data, say), each length-prefixed so that no two
// splits of the same bytes are the same input.
func inputOf(parts ...[]byte) inputID {
	if len(parts) == 1 {
		return inputID{len(parts[0]), sha256.Sum256(parts[0])}
	}
	h := sha256.New()
	id := inputID{}
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write(p)
		id.n += len(p)
	}
	h.Sum(id.sum[:0])
	return id
}

func (id inputID) is(other inputID) bool {
	return id.n == other.n && subtle.ConstantTimeCompare(id.sum[:], other.sum[:]) == 1
}

// keptInput is the input a single- or multi-part operation's kept output
// was measured over: a copy of it when it is short, its inputID past
// that. Every size query and prefetch records one, and copying a
// kilobyte costs a fraction of hashing it.
type keptInput struct {
	short []byte  // the input, when at most keepInputMax bytes (never nil then)
	buf   *[]byte // short's storage when it came from keptInputs
	long  inputID
}

// keepInputMax is the longest input kept as a copy, what the module
// keeps of the arguments of a result it holds.
const keepInputMax = 4096

// keepInputPooled is the shortest input whose copy goes into a buffer of
// keptInputs. Every prefetch keeps its input until the follow-up: a
// kilobyte allocated for each, and the garbage collection it caused,
// were most of what the length-query-first convention cost the daemon
// over one call (BenchmarkHotPathSession, HMAC and AES-GCM of 1 KiB).
// Shorter copies are cheap to allocate and keep their exact size.
const keepInputPooled = 257

// keptInputs are buffers of 512, 1024, 2048 and 4096 bytes, reused from
// one kept input to the next; each is charged whole while it is held
// (keptInput.held), at most twice the input it holds.
var keptInputs [4]sync.Pool

func init() {
	for i := range keptInputs {
		size := 512 << i
		keptInputs[i].New = func() any { b := make([]byte, size); return &b }
	}
}

func keepInput(in []byte) keptInput {
	switch {
	case len(in) > keepInputMax:
		return keptInput{long: inputOf(in)}
	case len(in) >= keepInputPooled:
		class := 0
		for 512<<class < len(in) {
			class++
		}
		buf := keptInputs[class].Get().(*[]byte)
		short := (*buf)[:len(in):len(in)]
		copy(short, in)
		return keptInput{short: short, buf: buf}
	}
	return keptInput{short: append(make([]byte, 0, len(in)), in...)}
}

// held is the memory the kept input takes: a pooled buffer whole.
func (k keptInput) held() int {
	if k.buf != nil {
		return cap(*k.buf)
	}
	return len(k.short)
}

// is says whether in is the kept input.
func (k keptInput) is(in []byte) bool {
	if k.short != nil {
		return len(in) == len(k.short) && subtle.ConstantTimeCompare(k.short, in) == 1
	}
	return len(in) > keepInputMax && k.long.is(inputOf(in))
}

// drop wipes a kept copy: an encryption's input is plaintext.
func (k *keptInput) drop() {
	clear(k.short)
	if k.buf != nil {
		for class := range keptInputs {
			if cap(*k.buf) == 512<<class {
				keptInputs[class].Put(k.buf)
			}
		}
	}
	*k = keptInput{}
}

// dropKept wipes and forgets the output kept for a size query (a
// decryption's is plaintext) and the input it was measured over.
func (op *operation) dropKept() {
	wipe(op.pending)
	op.pending, op.hasPend = nil, false
	op.pendIn.drop()
}

// output computes an operation's output once: a repeated call after a size
// query that brings the same input gets the kept output. A single-part
// call that brings other input is performed on it from the state after
// the Init, since a size query only returns a length (PKCS#11 5.2); the
// IV or nonce is then the Init's parameter's, as a new Init with that
// parameter would use, and no kept output of the first input is ever
// delivered by the daemon after it. An Update that brings other input
// goes back to the state marked before the Update that measured, which
// took the first input in; a cipher that cannot go back refuses it. So
// does a Final after an Update that was only measured.
// An Update after a Final or a single-part call that was only measured
// goes on from the state before it (resume).
// Another call in between mixes the single-part and multi-part forms,
// which the specification forbids (C_Encrypt "cannot be used to terminate
// a multi-part operation", nor the Final a single-part one):
// CKR_OPERATION_ACTIVE. Every error ends the operation.
func (op *operation) output(call callKind, in []byte, compute func() ([]byte, error)) ([]byte, error) {
	if op.hasPend && op.pendFor != call {
		r, ok := op.cipher.(mech.Rewinder)
		switch {
		case call == callUpdate:
			if err := op.resume(); err != nil {
				return nil, err
			}
		case ok && op.pendFor == callUpdate && call == callFinal:
			// The Final after an Update that was only measured: the
			// update did not happen (5.2), so the Final is over the
			// state before it.
			op.dropKept()
			r.Rewind()
		default:
			return nil, ck.Error(ck.CKR_OPERATION_ACTIVE)
		}
	}
	if op.hasPend {
		if op.pendIn.is(in) {
			return op.pending, nil
		}
		op.dropKept()
		switch r, ok := op.cipher.(mech.Rewinder); {
		case call == callOne:
			if err := op.again(); err != nil {
				return nil, err
			}
			if err := op.restart(); err != nil {
				return nil, err
			}
		case call == callUpdate && ok:
			// The state goes back to where it was before the update
			// measured, as if it had only been measured.
			r.Rewind()
		default:
			return nil, ck.Errorf(ck.CKR_ARGUMENTS_BAD, "an update's output was measured over other input")
		}
	}
	op.pendFor = call
	if r, ok := op.cipher.(mech.Rewinder); ok && call != callOne {
		// The state before an Update or a Final, to go back to when
		// it is only measured.
		r.Mark()
	}
	return compute()
}

// again says whether the operation may compute its output once more,
// over other input than the output a size query measured: a key with
// CKA_ALWAYS_AUTHENTICATE had its PIN for one use ("for each use (sign or
// decrypt)", PKCS#11 v3.0, 4.9), which the measured output took (and a
// prefetch handed it to the module already), so it wants the PIN again:
// CKR_USER_NOT_LOGGED_IN, which ends the operation.
func (op *operation) again() error {
	if op.key != nil && op.key.needsContextLogin() {
		return ck.Errorf(ck.CKR_USER_NOT_LOGGED_IN, "an output of a key that wants its PIN for each use was measured over other input")
	}
	return nil
}

// resume takes back, before an Update, a Final or a single-part call
// that was only measured: a size query (or CKR_BUFFER_TOO_SMALL) returns
// a length and nothing else, and leaves the operation active (PKCS#11
// 5.2; C_DigestFinal "always terminates the active digest operation
// unless it returns CKR_BUFFER_TOO_SMALL or is a successful call ... to
// determine the length"), so the Update goes on from the state before
// it. A single-part call's state is made anew from the Init; a Final's
// is the state it left (a digest's Sum, a mech.KeepsState signature) or
// the one marked before it (mech.Rewinder). A signature whose Final may
// have consumed its input refuses the Update (CKR_OPERATION_ACTIVE,
// which ends it). The kept output goes, wiped.
func (op *operation) resume() error {
	if !op.hasPend {
		return nil
	}
	if err := op.again(); err != nil {
		return err
	}
	switch op.pendFor {
	case callOne:
		op.dropKept()
		return op.restart()
	case callFinal:
		switch op.kind {
		case opDigest:
			op.dropKept()
			return nil
		case opSign:
			if _, ok := op.signer.(mech.KeepsState); ok {
				op.dropKept()
				return nil
			}
		case opEncrypt, opDecrypt:
			if r, ok := op.cipher.(mech.Rewinder); ok {
				op.dropKept()
				r.Rewind()
				return nil
			}
		}
	}
	return ck.Error(ck.CKR_OPERATION_ACTIVE)
}

// collect is the module's word that it handed over the output an
// Update's size query measured (calls.CollectUpdate): the update is done,
// and the next Update brings the next input, whatever it is. An Update
// with no kept output, or another kind of call's, is left alone.
func (s *session) collect(kind opKind) {
	op := s.ops[kind]
	if op == nil || !op.hasPend || op.pendFor != callUpdate {
		return
	}
	op.dropKept()
}

// produce runs a call that returns output on the session's operation of
// this kind, under the size-query convention. A single-part call refuses
// an operation already fed in parts, and a single-part-only mechanism
// refuses every other call; an update feeds the operation and never ends
// it, while a single-part call or a Final ends it once its output is
// delivered.
func produce(app *App, h uint64, kind opKind, call callKind, in []byte, out wire.OutSpec, r *wire.Results, compute func(op *operation) ([]byte, error)) error {
	var code uint64
	err := withOp(app, h, kind, func(op *operation) (bool, error) {
		switch {
		case call == callOne && op.parts:
			return true, ck.Error(ck.CKR_OPERATION_ACTIVE)
		case call != callOne && op.singlePart():
			return true, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
		}
		data, err := op.output(call, in, func() ([]byte, error) { return compute(op) })
		if err != nil {
			return true, err
		}
		var delivered bool
		delivered, code = deliver(op, out, data, r)
		if !delivered {
			op.pendIn.drop()
			op.pendIn = keepInput(in)
		}
		if call == callUpdate {
			op.parts = true
			return false, nil
		}
		return delivered, nil
	})
	if err != nil {
		return err
	}
	// CKR_BUFFER_TOO_SMALL: the operation stays, its output kept.
	return ck.Err(code)
}

// singlePart reports whether the operation's mechanism takes its input in
// one call only: always, or, for a verification that needs the signature
// before the message, when C_VerifyInit began it.
func (op *operation) singlePart() bool {
	if _, single := op.signer.(mech.SinglePartOnly); single {
		return true
	}
	_, first := op.signer.(mech.SignatureFirst)
	return first && op.kind == opVerify
}

// crypt is C_Encrypt or C_Decrypt: the whole input in one call.
func (app *App) crypt(h uint64, kind opKind, in []byte, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, kind, callOne, in, out, r, func(op *operation) ([]byte, error) {
		if one, ok := op.cipher.(mech.OneShot); ok {
			return one.One(in)
		}
		a, err := op.cipher.Update(in)
		if err != nil {
			return nil, err
		}
		b, err := op.cipher.Final()
		return append(a, b...), err
	})
}

// cryptUpdate is C_EncryptUpdate or C_DecryptUpdate. A cipher that
// keeps its input for the Final (GCM) keeps at most maxBuffer bytes, and
// takes them from the operation budget before it keeps them.
func (app *App) cryptUpdate(h uint64, kind opKind, in []byte, out wire.OutSpec, r *wire.Results, maxBuffer int) error {
	return produce(app, h, kind, callUpdate, in, out, r, func(op *operation) ([]byte, error) {
		if b, ok := op.cipher.(mech.Buffering); ok {
			if held, _ := b.Buffered(); len(in) > maxBuffer-held {
				return nil, ck.Errorf(lenRange(kind), "%d bytes held for the Final, %d more, at most %d", held, len(in), maxBuffer)
			}
			if err := op.reserve(len(in)); err != nil {
				return nil, err
			}
		}
		return op.cipher.Update(in)
	})
}

// cryptFinal is C_EncryptFinal or C_DecryptFinal.
func (app *App) cryptFinal(h uint64, kind opKind, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, kind, callFinal, nil, out, r, func(op *operation) ([]byte, error) {
		return op.cipher.Final()
	})
}

// digest is C_Digest.
func (app *App) digest(h uint64, in []byte, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, opDigest, callOne, in, out, r, func(op *operation) ([]byte, error) {
		op.digest.Update(in)
		return op.digest.Sum(), nil
	})
}

// digestUpdate is C_DigestUpdate.
func (app *App) digestUpdate(h uint64, in []byte) error {
	return withOp(app, h, opDigest, func(op *operation) (bool, error) {
		if err := op.resume(); err != nil {
			return true, err
		}
		op.parts = true
		op.digest.Update(in)
		return false, nil
	})
}

// digestKey is C_DigestKey: a secret key's value goes into the digest,
// never out of the token. Without a digest operation the call is
// CKR_OPERATION_NOT_INITIALIZED, whatever the key; with one, a key it
// cannot take (CKR_KEY_HANDLE_INVALID, CKR_KEY_INDIGESTIBLE) ends the
// operation, as every other error ends one (PKCS#11 v3.0: a call to
// C_DigestUpdate, which C_DigestKey is interspersed with, "which results
// in an error terminates the current digest operation").
func (e *Engine) digestKey(ctx context.Context, app *App, h, keyHandle uint64) error {
	s, err := app.session(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	active := s.ops[opDigest] != nil
	s.mu.Unlock()
	if !active {
		return ck.Error(ck.CKR_OPERATION_NOT_INITIALIZED)
	}
	v, kerr := e.digestible(ctx, app, s, keyHandle)
	return withOp(app, h, opDigest, func(op *operation) (bool, error) {
		if kerr != nil {
			return true, kerr
		}
		if err := op.resume(); err != nil {
			return true, err
		}
		op.parts = true
		op.digest.Update(v)
		return false, nil
	})
}

// digestible returns the value of the key C_DigestKey names: a secret
// key's, not an HSM-protected one's, which gives nothing of itself, not
// even a digest.
func (e *Engine) digestible(ctx context.Context, app *App, s *session, keyHandle uint64) ([]byte, error) {
	_, o, err := e.resolve(ctx, app, s, keyHandle)
	if err != nil {
		if c, _ := rvOf(err); c == ck.CKR_OBJECT_HANDLE_INVALID {
			return nil, ck.Error(ck.CKR_KEY_HANDLE_INVALID)
		}
		return nil, err
	}
	if o.Class() != ck.CKO_SECRET_KEY || ulongOf(o.attrsGet(ck.CKA_HSMEMU_PROTECTION)) == ck.CKP_HSMEMU_HSM {
		return nil, ck.Error(ck.CKR_KEY_INDIGESTIBLE)
	}
	v, _ := o.Attr(ck.CKA_VALUE)
	return v, nil
}

// digestFinal is C_DigestFinal.
func (app *App) digestFinal(h uint64, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, opDigest, callFinal, nil, out, r, func(op *operation) ([]byte, error) {
		return op.digest.Sum(), nil
	})
}

// sign is C_Sign.
func (app *App) sign(h uint64, in []byte, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, opSign, callOne, in, out, r, func(op *operation) ([]byte, error) {
		if err := op.signer.Update(in); err != nil {
			return nil, err
		}
		return op.signer.Sign()
	})
}

// signVerifyUpdate is C_SignUpdate or C_VerifyUpdate.
func (app *App) signVerifyUpdate(h uint64, kind opKind, in []byte) error {
	return withOp(app, h, kind, func(op *operation) (bool, error) {
		if op.singlePart() {
			return true, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
		}
		if err := op.resume(); err != nil {
			return true, err
		}
		op.parts = true
		return false, op.signer.Update(in)
	})
}

// signFinal is C_SignFinal.
func (app *App) signFinal(h uint64, out wire.OutSpec, r *wire.Results) error {
	return produce(app, h, opSign, callFinal, nil, out, r, func(op *operation) ([]byte, error) {
		return op.signer.Sign()
	})
}

// verify is C_Verify; VerifyFinal is C_VerifyFinal. Both end the
// operation, whatever the outcome.
func (app *App) verify(h uint64, in, sig []byte) error {
	return withOp(app, h, opVerify, func(op *operation) (bool, error) {
		if op.parts {
			return true, ck.Error(ck.CKR_OPERATION_ACTIVE)
		}
		if err := op.signer.Update(in); err != nil {
			return true, err
		}
		return true, op.signer.Verify(sig)
	})
}

func (app *App) verifyFinal(h uint64, sig []byte) error {
	return withOp(app, h, opVerify, func(op *operation) (bool, error) {
		if op.singlePart() {
			return true, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
		}
		return true, op.signer.Verify(sig)
	})
}
