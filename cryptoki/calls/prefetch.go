package calls

// prefetching are the calls whose output, once measured, the follow-up
// with the same input gets, and the protocol version from which a
// module asks for it with the size query. The daemon keeps what a size
// query measured and gives exactly that to the call that follows with the
// same input; for other input it makes the operation anew from its Init
// (the single-part calls; the Finals take none), or the call has no state
// at all (C_WrapKey, whose follow-up repeats its arguments), or, for the
// Updates (from version 4), it rewinds the state to before the measured
// update (mech.Rewinder), or, for the one-call messages (from version 5),
// it makes the message anew, with a new IV of the token's (the last part
// of a message signed in parts it refuses, as after any part's size
// query: no output goes to other input), or, for C_WrapKeyAuthenticated
// (from version 6), it has no state, as C_WrapKey, and seals under a new
// IV of the token's for other arguments. For these a
// module may ask, with a NULL output buffer, for the whole result with its
// length (a message's with what its parameter gets back), keep it, and
// serve the follow-up call itself when its arguments match
// (docs/protocol.md, "Results ahead of the follow-up call").
var prefetching = map[string]int{
	"C_Encrypt":       3,
	"C_EncryptFinal":  3,
	"C_Decrypt":       3,
	"C_DecryptFinal":  3,
	"C_Digest":        3,
	"C_DigestFinal":   3,
	"C_Sign":          3,
	"C_SignFinal":     3,
	"C_SignRecover":   3,
	"C_VerifyRecover": 3,
	"C_WrapKey":       3,
	"C_EncryptUpdate": 4,
	"C_DecryptUpdate": 4,
	// A message's follow-up owes the daemon the end of that message
	// (CancelCurrentMessage), not of its process.
	"C_EncryptMessage": 5,
	"C_DecryptMessage": 5,
	"C_SignMessage":    5,
	// A part's: the daemon refuses a follow-up with other input, as
	// without a prefetch (the part is in the message already). The
	// signature's is its last part's (a length pointer, OptOutBytes).
	"C_SignMessageNext":    5,
	"C_EncryptMessageNext": 5,
	"C_DecryptMessageNext": 5,
	// Sealed at the query under an IV of the token's, as C_WrapKey's
	// wrap with what the parameter gets back (the IV, the tag); no
	// operation, so nothing is owed after the follow-up.
	"C_WrapKeyAuthenticated": 6,
}

// lastPartFlags are the prefetching calls whose operation goes on after
// the follow-up unless the flags argument named here says the part is the
// last (CKF_END_OF_MESSAGE): for a part before it the module owes the
// daemon CollectUpdate, for the last the end of the message.
var lastPartFlags = map[string]string{"C_EncryptMessageNext": "flags", "C_DecryptMessageNext": "flags"}

// PrefetchLastPartFlags is the argument of c that says whether its part
// is the last, for a call whose operation goes on after any other part's
// follow-up; "" for the others.
func PrefetchLastPartFlags(c *Call) string { return lastPartFlags[c.Name] }

// goesOn are the prefetching calls whose operation goes on after the
// follow-up took the output.
var goesOn = map[string]bool{"C_EncryptUpdate": true, "C_DecryptUpdate": true}

// Prefetches says whether a size query of c may ask for the whole result.
// The daemon asks for every request: a table's own calls are answered by
// their number, without hashing a name.
func Prefetches(c *Call) bool { return PrefetchVersion(c) != 0 }

// PrefetchVersion is the protocol version from which c prefetches; 0 for
// a call that never does. A module speaking an older version sends the
// size query as a plain NULL buffer.
func PrefetchVersion(c *Call) int {
	if inTable(c) {
		return prefetchByID[c.ID]
	}
	return prefetching[c.Name]
}

// prefetchByID is prefetching by call number.
var prefetchByID = byID(func(c *Call) int { return prefetching[c.Name] })

// PrefetchGoesOn says that c's operation goes on after the follow-up
// took the prefetched output (an Update): the module then owes the daemon
// a C_SessionCancel with CollectUpdate, not one that ends the operation,
// and the reply's idle flag counts the operation as it is.
func PrefetchGoesOn(c *Call) bool {
	if inTable(c) {
		return goesOnByID[c.ID]
	}
	return goesOn[c.Name]
}

// goesOnByID is goesOn by call number.
var goesOnByID = byID(func(c *Call) bool { return goesOn[c.Name] })
