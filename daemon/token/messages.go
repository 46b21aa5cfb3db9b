package token

import (
	"context"
	"encoding/binary"

	"hsmemu/cryptoki/calls"
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
	private             bool // the key is private: the process ends at logout
	cur                 *message
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
	op.cur = &message{parts: parts}
	return op.cur, nil
}

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
	m.pending, m.pendOuts, m.hasPend = nil, nil, false
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

// tagOf is a decryption part's tag, or nil: what, beside its data, its
// output depends on.
func tagOf(op *msgOp, p *wire.Param) []byte {
	if mp, err := op.cipher.Params(p, false); err == nil {
		return mp.Tag
	}
	return nil
}

// sealID identifies what an encryption's output depends on: the data,
// the associated data, and the parameter's IV buffer (the caller's IV, or
// the fixed part of the token's), its generator and fixed bits.
func sealID(mp *mech.MsgParams, aad, in []byte) inputID {
	var how [16]byte
	binary.BigEndian.PutUint64(how[:8], uint64(mp.Gen))
	binary.BigEndian.PutUint64(how[8:], uint64(mp.FixedBits))
	return inputOf(aad, in, mp.IV, how[:])
}

// fits says whether an output of n bytes goes into the caller's buffer.
func fits(out wire.OutSpec, n int) bool { return out.Present && out.Capacity >= uint64(n) }

// messageIV makes the IV of a message to encrypt: the caller's, or the
// token's from the key's counter or its random generator.
func (op *msgOp) messageIV(ctx context.Context, mp *mech.MsgParams) ([]byte, error) {
	switch mp.Gen {
	case mech.IVCounter:
		if op.ivs == nil {
			return nil, ck.Errorf(ck.CKR_GENERAL_ERROR, "a counter IV without a counter")
		}
		c, err := op.ivs.take(ctx)
		if err != nil {
			return nil, err
		}
		return mech.CounterIV(mp, c), nil
	case mech.IVRandom:
		return mech.RandomIV(mp), nil
	}
	return mp.IV, nil
}

// ivOut is what an encryption's parameter gets back for its IV: the
// token's IV; nothing for the caller's own.
func ivOut(mp *mech.MsgParams, iv []byte, outs map[string][]byte) {
	if mp.Gen != mech.IVCaller {
		outs["pIv"] = iv
	}
}

// encryptMessage is C_EncryptMessage.
func (e *Engine) encryptMessage(ctx context.Context, app *App, h uint64, p *wire.Param, aad, in []byte, out wire.OutSpec, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgEncrypt, func(op *msgOp) (bool, error) {
		m, kept, err := op.keptOne(func() (inputID, error) {
			mp, err := op.cipher.Params(p, true)
			if err != nil {
				return inputID{}, err
			}
			return sealID(mp, aad, in), nil
		})
		if err != nil {
			return true, err
		}
		if !kept {
			if m == nil {
				if m, err = op.start(false); err != nil {
					return true, err
				}
			}
			mp, err := op.cipher.Params(p, true)
			if err != nil {
				return true, err
			}
			// A message made anew takes a new IV of the token's too.
			iv, err := op.messageIV(ctx, mp)
			if err != nil {
				return true, err
			}
			ct, tag, err := op.cipher.Seal(mp, iv, aad, in)
			if err != nil {
				return true, err
			}
			outs := map[string][]byte{"pTag": tag}
			ivOut(mp, iv, outs)
			m.keep(callOne, ct, outs, sealID(mp, aad, in))
		}
		return deliverMsg(m, p, out, r, &code)
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
}

// deliverMsg applies the size-query convention to a kept encryption's
// output and what its parameter gets back: both when the output fits,
// neither otherwise. It reports whether the message ended.
func deliverMsg(m *message, p *wire.Param, out wire.OutSpec, r *wire.Results, code *uint64) (bool, error) {
	give := fits(out, len(m.pending))
	if give && !wire.MsgOutFits(p, m.pendOuts) {
		// The parameter is not the one the output was measured with.
		return true, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	if give {
		r.MsgOut(p, m.pendOuts)
	} else {
		r.MsgOut(p, nil)
	}
	*code = r.OutBytes(out, m.pending)
	return give, nil
}

// encryptMessageBegin is C_EncryptMessageBegin: the IV is made now and
// goes back in the parameter.
func (e *Engine) encryptMessageBegin(ctx context.Context, app *App, h uint64, p *wire.Param, aad []byte, r *wire.Results) error {
	return withMsg(app, h, msgEncrypt, func(op *msgOp) (bool, error) {
		m, err := op.start(true)
		if err != nil {
			return true, err
		}
		mp, err := op.cipher.Params(p, true)
		if err != nil {
			return true, err
		}
		iv, err := op.messageIV(ctx, mp)
		if err != nil {
			return true, err
		}
		m.mp, m.iv, m.aad = mp, iv, append([]byte{}, aad...)
		outs := map[string][]byte{}
		ivOut(mp, iv, outs)
		r.MsgOut(p, outs)
		return false, nil
	})
}

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

// samePart checks a Next's parameter against its Begin's: the same
// structure, IV length and generator (the IV itself was the Begin's).
func samePart(a, b *mech.MsgParams) error {
	if a.Gen != b.Gen || a.FixedBits != b.FixedBits || len(a.IV) != len(b.IV) {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return nil
}

// addPart buffers a part of a multi-part AEAD message: at most max bytes
// in all (Config.MaxOpBuffer: the last part's output, all of it, goes in
// one reply), taken from the operation budget before they are kept.
func (op *msgOp) addPart(m *message, in []byte, decrypt bool, max int) error {
	if len(in) > max-len(m.in) {
		code := uint64(ck.CKR_DATA_LEN_RANGE)
		if decrypt {
			code = ck.CKR_ENCRYPTED_DATA_LEN_RANGE
		}
		return ck.Errorf(code, "%d bytes held for the last part, %d more, at most %d", len(m.in), len(in), max)
	}
	if err := op.reserve(len(in)); err != nil {
		return err
	}
	m.in = append(m.in, in...)
	return nil
}

// encryptMessageNext is C_EncryptMessageNext. The parts are buffered, as
// C_EncryptUpdate does for GCM: the last returns the whole ciphertext,
// and the tag in the parameter.
func (e *Engine) encryptMessageNext(app *App, h uint64, p *wire.Param, in []byte, out wire.OutSpec, flags uint64, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgEncrypt, func(op *msgOp) (bool, error) {
		call, err := nextCall(flags)
		if err != nil {
			return true, err
		}
		m, kept, err := op.keptNext(call, inputOf(in))
		if err != nil {
			return true, err
		}
		if !kept {
			mp, err := op.cipher.Params(p, true)
			if err != nil {
				return true, err
			}
			if err := samePart(mp, m.mp); err != nil {
				return true, err
			}
			if err := op.addPart(m, in, false, e.cfg.MaxOpBuffer); err != nil {
				return true, err
			}
			if call == callUpdate {
				m.keep(callUpdate, []byte{}, nil, inputOf(in))
			} else {
				m.mp.TagLen = mp.TagLen // the last part's buffer takes the tag
				ct, tag, err := op.cipher.Seal(m.mp, m.iv, m.aad, m.in)
				wipe(m.in)
				m.in = nil
				if err != nil {
					return true, err
				}
				m.keep(callFinal, ct, map[string][]byte{"pTag": tag}, inputOf(in))
			}
		}
		delivered, err := deliverMsg(m, p, out, r, &code)
		if delivered && call == callUpdate {
			m.hasPend = false
			return false, err
		}
		return delivered, err
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
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

// decryptMessage is C_DecryptMessage: the tag comes in the parameter.
func (e *Engine) decryptMessage(app *App, h uint64, p *wire.Param, aad, in []byte, out wire.OutSpec, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgDecrypt, func(op *msgOp) (bool, error) {
		m, kept, err := op.keptOne(func() (inputID, error) {
			mp, err := op.cipher.Params(p, false)
			if err != nil {
				return inputID{}, err
			}
			return inputOf(aad, in, mp.IV, mp.Tag), nil
		})
		if err != nil {
			return true, err
		}
		if !kept {
			if m == nil {
				if m, err = op.start(false); err != nil {
					return true, err
				}
			}
			mp, err := op.cipher.Params(p, false)
			if err != nil {
				return true, err
			}
			if mp.Tag == nil {
				return true, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
			}
			plain, err := op.cipher.Open(mp, mp.IV, aad, in, mp.Tag)
			if err != nil {
				return true, err
			}
			m.keep(callOne, plain, nil, inputOf(aad, in, mp.IV, mp.Tag))
		}
		code = r.OutBytes(out, m.pending)
		return fits(out, len(m.pending)), nil
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
}

// decryptMessageBegin is C_DecryptMessageBegin: the IV and the AAD now,
// the tag with the last part.
func (e *Engine) decryptMessageBegin(app *App, h uint64, p *wire.Param, aad []byte) error {
	return withMsg(app, h, msgDecrypt, func(op *msgOp) (bool, error) {
		m, err := op.start(true)
		if err != nil {
			return true, err
		}
		mp, err := op.cipher.Params(p, false)
		if err != nil {
			return true, err
		}
		m.mp, m.iv, m.aad = mp, mp.IV, append([]byte{}, aad...)
		return false, nil
	})
}

// decryptMessageNext is C_DecryptMessageNext: nothing comes out before
// the last part, whose parameter brings the tag.
func (e *Engine) decryptMessageNext(app *App, h uint64, p *wire.Param, in []byte, out wire.OutSpec, flags uint64, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgDecrypt, func(op *msgOp) (bool, error) {
		call, err := nextCall(flags)
		if err != nil {
			return true, err
		}
		m, kept, err := op.keptNext(call, inputOf(in, tagOf(op, p)))
		if err != nil {
			return true, err
		}
		if !kept {
			mp, err := op.cipher.Params(p, false)
			if err != nil {
				return true, err
			}
			if len(mp.IV) != len(m.iv) {
				return true, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
			}
			if err := op.addPart(m, in, true, e.cfg.MaxOpBuffer); err != nil {
				return true, err
			}
			if call == callUpdate {
				m.keep(callUpdate, []byte{}, nil, inputOf(in, mp.Tag))
			} else {
				if mp.Tag == nil {
					return true, ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
				}
				plain, err := op.cipher.Open(m.mp, m.iv, m.aad, m.in, mp.Tag)
				wipe(m.in)
				m.in = nil
				if err != nil {
					return true, err
				}
				m.keep(callFinal, plain, nil, inputOf(in, mp.Tag))
			}
		}
		code = r.OutBytes(out, m.pending)
		delivered := fits(out, len(m.pending))
		if delivered && call == callUpdate {
			m.hasPend = false
			return false, nil
		}
		return delivered, nil
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
}

// noSigParam checks a signature message's parameter: no mechanism here
// has one (PKCS#11 3.0 defines none for them).
func noSigParam(p *wire.Param) error {
	if p.Kind != calls.PNone {
		return ck.Error(ck.CKR_MECHANISM_PARAM_INVALID)
	}
	return nil
}

// signMessage is C_SignMessage: each message is a whole signature.
func (e *Engine) signMessage(app *App, h uint64, p *wire.Param, in []byte, out wire.OutSpec, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgSign, func(op *msgOp) (bool, error) {
		m, kept, err := op.keptOne(func() (inputID, error) { return inputOf(in), nil })
		if err != nil {
			return true, err
		}
		if !kept {
			if err := noSigParam(p); err != nil {
				return true, err
			}
			if m == nil {
				if m, err = op.start(false); err != nil {
					return true, err
				}
			}
			sig, err := op.signature(in)
			if err != nil {
				return true, err
			}
			m.keep(callOne, sig, nil, inputOf(in))
		}
		code = r.OutBytes(out, m.pending)
		return fits(out, len(m.pending)), nil
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
}

// signature signs one message whole.
func (op *msgOp) signature(in []byte) ([]byte, error) {
	s, err := op.signer(msgSign)
	if err != nil {
		return nil, err
	}
	if err := s.Update(in); err != nil {
		return nil, err
	}
	return s.Sign()
}

// signVerifyMessageBegin is C_SignMessageBegin or C_VerifyMessageBegin.
// The mechanisms the specification makes single-part take their messages
// whole: CKR_FUNCTION_NOT_SUPPORTED, as C_SignUpdate is for them.
func (e *Engine) signVerifyMessageBegin(app *App, h uint64, k msgKind, p *wire.Param) error {
	return withMsg(app, h, k, func(op *msgOp) (bool, error) {
		if err := noSigParam(p); err != nil {
			return true, err
		}
		m, err := op.start(true)
		if err != nil {
			return true, err
		}
		if m.signer, err = op.signer(k); err != nil {
			return true, err
		}
		if _, single := m.signer.(mech.SinglePartOnly); single {
			return true, ck.Error(ck.CKR_FUNCTION_NOT_SUPPORTED)
		}
		return false, nil
	})
}

// signMessageNext is C_SignMessageNext: with no length pointer a part,
// with one the last part and the signature.
func (e *Engine) signMessageNext(app *App, h uint64, p *wire.Param, in []byte, out wire.OutSpec, last bool, r *wire.Results) error {
	var code uint64
	err := withMsg(app, h, msgSign, func(op *msgOp) (bool, error) {
		call := callUpdate
		if last {
			call = callFinal
		}
		m, kept, err := op.keptNext(call, inputOf(in))
		if err != nil {
			return true, err
		}
		if !kept {
			if err := noSigParam(p); err != nil {
				return true, err
			}
			if err := m.signer.Update(in); err != nil {
				return true, err
			}
			if !last {
				r.OptOutBytes(out, false, nil)
				return false, nil
			}
			sig, err := m.signer.Sign()
			if err != nil {
				return true, err
			}
			m.keep(callFinal, sig, nil, inputOf(in))
		}
		code = r.OptOutBytes(out, true, m.pending)
		return fits(out, len(m.pending)), nil
	})
	if err != nil {
		return err
	}
	return ck.Err(code)
}

// verifyMessage is C_VerifyMessage: the message ends whatever the outcome.
func (e *Engine) verifyMessage(app *App, h uint64, p *wire.Param, in, sig []byte) error {
	return withMsg(app, h, msgVerify, func(op *msgOp) (bool, error) {
		if err := noSigParam(p); err != nil {
			return true, err
		}
		if _, err := op.start(false); err != nil {
			return true, err
		}
		v, err := op.signer(msgVerify)
		if err != nil {
			return true, err
		}
		if err := v.Update(in); err != nil {
			return true, err
		}
		return true, v.Verify(sig)
	})
}

// verifyMessageNext is C_VerifyMessageNext: with a NULL signature a part,
// else the last part, checked against it; that ends the message whatever
// the outcome.
func (e *Engine) verifyMessageNext(app *App, h uint64, p *wire.Param, in, sig []byte, last bool) error {
	return withMsg(app, h, msgVerify, func(op *msgOp) (bool, error) {
		m, _, err := op.nextMessage(callUpdate)
		if err != nil {
			return true, err
		}
		if err := noSigParam(p); err != nil {
			return true, err
		}
		if err := m.signer.Update(in); err != nil {
			return true, err
		}
		if !last {
			return false, nil
		}
		return true, m.signer.Verify(sig)
	})
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
