package e2e

// #include <stdlib.h>
import "C"

import (
	"encoding/binary"
	"unsafe"
)

// Mechanism parameters miekg/pkcs11 has no type for (the ChaCha20
// structures of PKCS#11 3.0, 3.2's CK_HASH_SIGN_ADDITIONAL_CONTEXT) travel as the bytes of the C structure; the
// byte strings they point to must be C memory, which cParams holds until
// free. The structures are laid out for LP64 (64-bit CK_ULONG and
// pointers), which lp64 says.

// lp64 reports whether this process's C ABI is the one the structures
// below are laid out for.
const lp64 = unsafe.Sizeof(uintptr(0)) == 8 && unsafe.Sizeof(C.ulong(0)) == 8

type cParams struct{ ptrs []unsafe.Pointer }

// ptr copies b into C memory and returns its address (0 for nil).
func (c *cParams) ptr(b []byte) uint64 {
	if b == nil {
		return 0
	}
	p := C.CBytes(b)
	c.ptrs = append(c.ptrs, p)
	return uint64(uintptr(p))
}

func (c *cParams) free() {
	for _, p := range c.ptrs {
		C.free(p)
	}
	c.ptrs = nil
}

// chachaPolyParams is CK_SALSA20_CHACHA20_POLY1305_PARAMS: pNonce,
// ulNonceLen (bytes), pAAD, ulAADLen.
func (c *cParams) chachaPolyParams(nonce, aad []byte) []byte {
	b := binary.NativeEndian.AppendUint64(nil, c.ptr(nonce))
	b = binary.NativeEndian.AppendUint64(b, uint64(len(nonce)))
	b = binary.NativeEndian.AppendUint64(b, c.ptr(aad))
	return binary.NativeEndian.AppendUint64(b, uint64(len(aad)))
}

// chachaParams is CK_CHACHA20_PARAMS: pBlockCounter, blockCounterBits,
// pNonce, ulNonceBits.
func (c *cParams) chachaParams(counter []byte, counterBits uint64, nonce []byte, nonceBits uint64) []byte {
	b := binary.NativeEndian.AppendUint64(nil, c.ptr(counter))
	b = binary.NativeEndian.AppendUint64(b, counterBits)
	b = binary.NativeEndian.AppendUint64(b, c.ptr(nonce))
	return binary.NativeEndian.AppendUint64(b, nonceBits)
}

// hashSignContext is CK_HASH_SIGN_ADDITIONAL_CONTEXT (PKCS#11 3.2):
// hedgeVariant, pContext, ulContextLen, hash.
func (c *cParams) hashSignContext(hedge uint64, ctx []byte, hash uint64) []byte {
	b := binary.NativeEndian.AppendUint64(nil, hedge)
	b = binary.NativeEndian.AppendUint64(b, c.ptr(ctx))
	b = binary.NativeEndian.AppendUint64(b, uint64(len(ctx)))
	return binary.NativeEndian.AppendUint64(b, hash)
}

// signContext is CK_SIGN_ADDITIONAL_CONTEXT (PKCS#11 3.2): hedgeVariant,
// pContext, ulContextLen.
func (c *cParams) signContext(hedge uint64, ctx []byte) []byte {
	b := binary.NativeEndian.AppendUint64(nil, hedge)
	b = binary.NativeEndian.AppendUint64(b, c.ptr(ctx))
	return binary.NativeEndian.AppendUint64(b, uint64(len(ctx)))
}
