package calls

// prefetching are the calls whose output, once measured, the follow-up
// with the same input gets: the daemon keeps what a size query measured
// and gives exactly that to the call that follows with the same input,
// and makes the operation anew from its Init for other input (the
// single-part calls; the Finals take none), or the call has no state at
// all (C_WrapKey, whose follow-up repeats its arguments). For these a
// module of protocol version 3 may ask, with a NULL output buffer, for the
// whole result with its length, keep it, and serve the follow-up call
// itself when its arguments match (docs/protocol.md, "Results ahead of the
// follow-up call"). The Updates are not here: the daemon measures an
// Update by running it, so a follow-up that brings other input cannot get
// that input's output, and is refused (docs/performance.md, "One round
// trip per operation in either convention").
var prefetching = map[string]bool{
	"C_Encrypt":       true,
	"C_EncryptFinal":  true,
	"C_Decrypt":       true,
	"C_DecryptFinal":  true,
	"C_Digest":        true,
	"C_DigestFinal":   true,
	"C_Sign":          true,
	"C_SignFinal":     true,
	"C_SignRecover":   true,
	"C_VerifyRecover": true,
	"C_WrapKey":       true,
}

// Prefetches says whether a size query of c may ask for the whole result.
func Prefetches(c *Call) bool { return prefetching[c.Name] }
