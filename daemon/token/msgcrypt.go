package token

import (
	"context"
	"encoding/binary"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/daemon/mech"
)

// Message-based encryption and decryption (messages.go): AEAD messages
// in one call or in parts, their IVs and their tags.

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
// the fixed part of the token's), its generator and fixed bits, and the
// tag's length (a follow-up that asks for another tag is another
// message, not one whose tag does not fit).
func sealID(mp *mech.MsgParams, aad, in []byte) inputID {
	var how [24]byte
	binary.BigEndian.PutUint64(how[:8], uint64(mp.Gen))
	binary.BigEndian.PutUint64(how[8:16], uint64(mp.FixedBits))
	binary.BigEndian.PutUint64(how[16:], uint64(mp.TagLen))
	return inputOf(aad, in, mp.IV, how[:])
}

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
//
// A prefetch (a NULL buffer asking for the whole result, from protocol
// version 5) gets both too, and the message stays with its output kept,
// as after any size query: the module holds them and hands them over to
// the follow-up that brings the same input and parameter (then ends the
// message, or for a part that is not the last says it collected it:
// collectPart). Outputs that do not fit the parameter leave it a plain
// size query, so the follow-up comes here and gets the error.
func deliverMsg(m *message, p *wire.Param, out wire.OutSpec, r *wire.Results, code *uint64) (bool, error) {
	if out.Prefetch && !out.Present {
		if len(m.pending) <= wire.MaxPrefetch && wire.MsgOutFits(p, m.pendOuts) {
			r.MsgOut(p, m.pendOuts)
			*code = r.OutBytes(out, m.pending)
			return false, nil
		}
		out.Prefetch = false
	}
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
