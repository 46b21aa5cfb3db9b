package token

import (
	"hsmemu/cryptoki/calls"
	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
)

// Message-based signing and verification (messages.go): each message a
// signature of its own, whole or in parts.

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
		// Checked before a kept output is given: a size query measured
		// the call with its own parameter, not this one.
		if err := noSigParam(p); err != nil {
			return true, err
		}
		m, kept, err := op.keptOne(func() (inputID, error) { return inputOf(in), nil })
		if err != nil {
			return true, err
		}
		if !kept {
			switch {
			case m == nil:
				if m, err = op.start(false); err != nil {
					return true, err
				}
			case op.wantsAuth:
				// The message's signature over the input its size
				// query measured took the PIN given for it
				// (operation.again).
				return true, ck.Errorf(ck.CKR_USER_NOT_LOGGED_IN, "a signature of a key that wants its PIN for each use was measured over other input")
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
		// A verification in parts gets its signature only with the last
		// part.
		if _, first := m.signer.(mech.SignatureFirst); first && k == msgVerify {
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
		if err := noSigParam(p); err != nil {
			return true, err
		}
		m, kept, err := op.keptNext(call, inputOf(in))
		if err != nil {
			return true, err
		}
		if !kept {
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
