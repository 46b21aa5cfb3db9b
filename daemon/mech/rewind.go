package mech

import (
	"crypto/cipher"
	"encoding/binary"
)

// Rewinder is implemented by cipher operations that can go back to the
// state they had before an Update. An Update whose output was only
// measured (a size query) has taken its input into the state; PKCS#11
// says the query returned a length and nothing else (5.2), so a follow-up
// that brings other input must get that input's output from the state
// before it. The engine marks the state before each Update and rewinds
// to the mark when the follow-up's input differs (docs/protocol.md, "The
// size-query convention").
type Rewinder interface {
	// Mark remembers the state as it is now, in place of the last mark.
	Mark()
	// Rewind goes back to the state at the last Mark.
	Rewind()
}

var (
	_ Rewinder = (*blockOp)(nil)
	_ Rewinder = (*ctrOp)(nil)
	_ Rewinder = (*chachaOp)(nil)
	_ Rewinder = (*oneShotCipher)(nil)
)

// Mark keeps the partial block and, for CBC, the chaining value.
func (op *blockOp) Mark() {
	wipe(op.markBuf)
	op.markBuf = append(op.markBuf[:0], op.buf...)
	op.markIV = append(op.markIV[:0], op.iv...)
}

// Rewind makes CBC's mode anew from the marked chaining value: the
// standard library's modes keep theirs out of reach.
func (op *blockOp) Rewind() {
	wipe(op.buf)
	op.buf = append(op.buf[:0], op.markBuf...)
	if op.iv == nil {
		return
	}
	copy(op.iv, op.markIV)
	if op.decrypt {
		op.mode = cipher.NewCBCDecrypter(op.blk, op.iv)
	} else {
		op.mode = cipher.NewCBCEncrypter(op.blk, op.iv)
	}
}

func (op *ctrOp) Mark() { op.markDone = op.done }

// Rewind makes the key stream anew at the marked offset: the counter
// block of that offset's block, then the bytes of it already used. The
// counter never carries out of its bits within the blocks it has
// (newCTROp), so a 128-bit addition gives the same block.
func (op *ctrOp) Rewind() {
	ctr := op.cb
	hi, lo := binary.BigEndian.Uint64(ctr[:8]), binary.BigEndian.Uint64(ctr[8:])
	n := op.markDone / 16
	if lo+n < lo {
		hi++
	}
	lo += n
	binary.BigEndian.PutUint64(ctr[:8], hi)
	binary.BigEndian.PutUint64(ctr[8:], lo)
	op.stream = cipher.NewCTR(op.blk, ctr[:])
	if r := op.markDone % 16; r != 0 {
		var skip [16]byte
		op.stream.XORKeyStream(skip[:r], skip[:r])
	}
	op.done = op.markDone
}

// Mark copies the cipher's state: golang.org/x/crypto's chacha20.Cipher
// holds only values (the key, the counter, the nonce, the key stream
// buffered), so a copy is the whole state, and cannot be set back
// otherwise (SetCounter refuses to go back).
func (op *chachaOp) Mark() {
	op.mark = *op.c
	op.markDone = op.done
}

func (op *chachaOp) Rewind() {
	*op.c = op.mark
	op.done = op.markDone
}

func (c *oneShotCipher) Mark() { c.mark = len(c.buf) }

// Rewind drops, wiped, the input taken since the mark.
func (c *oneShotCipher) Rewind() {
	if c.mark <= len(c.buf) {
		wipe(c.buf[c.mark:])
		c.buf = c.buf[:c.mark]
	}
}
