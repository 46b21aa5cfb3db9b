// Package wire is the codec of the protocol between hsmemu's PKCS#11 module
// and its daemon (docs/protocol.md): the connection hello, the frames, the
// arguments of a request and the results of a reply. The daemon uses the
// decoding half of requests and the encoding half of replies; the other
// halves (EncodeArgs, DecodeResults) are the Go client that tests, fuzzing
// and the benchmark harness use to speak exactly what the C module speaks.
//
// # Driven by the table
//
// Nothing here knows what C_Sign takes. DecodeArgs walks the call's entry in
// package calls, argument by argument, and decodes each by its kind; the
// Results builder checks that the daemon supplies the call's outputs in the
// table's order. The module's C stubs are generated from the same table, so a
// call added there is carried by both sides at once and the two cannot
// drift apart. The table also fixes each argument's kind, so asking Args for
// the wrong kind is a programming error and panics; bad input from the peer
// never panics, it yields ErrMalformed.
//
// # Why every CK_ULONG is 64 bits
//
// A CK_ULONG is 32 bits on some clients (Windows, 32-bit builds) and 64 on
// others. The wire always carries a u64, and the module converts CK_ULONG
// attribute values to 8 bytes big-endian, so the daemon sees one encoding
// whatever the client and never has to guess a word size.
//
// # Why NULL is not empty
//
// PKCS#11 gives a NULL output pointer a meaning of its own: "tell me the
// length" (the size-query convention), which keeps a multi-part operation
// alive where an empty buffer would end it with ck.CKR_BUFFER_TOO_SMALL. NULL
// inputs are likewise distinct from empty ones (a NULL PIN asks for a
// protected authentication path). So every pointer-and-length pair carries a
// distinct NULL marker, and the decoded values keep the distinction in an
// explicit Null flag rather than in Go's nil-versus-empty slices.
//
// # Exact, bounded, allocation-aware
//
// Decoding is exact: trailing bytes, short input, a count or length over its
// cap, a presence byte other than 0 or 1, all yield ErrMalformed, so every
// accepted body re-encodes to itself byte for byte (the fuzz targets check
// this). No length from the peer is trusted before it is checked against its
// cap and against the bytes actually present; a frame's declared size is
// checked against MaxFrame before anything is allocated for it.
//
// Decoded byte slices alias the request body, and the body aliases the
// caller's read buffer: the daemon copies whatever it keeps beyond the
// request. An Args and a Results can be reset and reused, so the hot path
// (C_GenerateRandom, C_Sign) decodes and encodes without allocating.
package wire
