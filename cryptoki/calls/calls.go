// Package calls is the one table of the PKCS#11 functions hsmemu carries
// between its C module and the daemon. The daemon's codec (package wire)
// walks it to decode requests and encode replies; the module's C stubs are
// generated from it at build time (cmd/p11gen). Nothing else describes the
// shape of a call, so the two sides cannot drift apart.
//
// Every function of the PKCS#11 2.40 function list, the 3.0 additions and
// the 3.2 additions is listed, in function-list order. A call is one of:
//   - forwarded: the module marshals its arguments, the daemon answers;
//   - local: the module answers itself (C_Initialize, C_GetInfo, ...);
//   - unsupported: the module answers CKR_FUNCTION_NOT_SUPPORTED itself,
//     whatever the arguments, as the specification asks of a function
//     the library does not support (C_Get/SetOperationState and the
//     dual-function calls: their functions are in the module's local.c).
package calls

// Kind is the shape of one argument: which C parameters it spans and how it
// travels. The wire encoding of each kind is in docs/protocol.md.
type Kind int

const (
	// Ulong is one CK_ULONG-sized input (a handle, slot id, flags, type).
	// Wire: u64.
	Ulong Kind = iota + 1
	// Byte is one CK_BBOOL or CK_BYTE input. Wire: u8.
	Byte
	// Bytes is an input byte string: (CK_BYTE_PTR p, CK_ULONG len).
	// Wire: bytes, where NULL is distinct from empty.
	Bytes
	// Label is a 32-byte blank-padded CK_UTF8CHAR label input (C_InitToken).
	// Wire: bytes (exactly 32, or NULL).
	Label
	// Template is an input attribute array: (CK_ATTRIBUTE_PTR, CK_ULONG).
	// Wire: template.
	Template
	// Mechanism is an input CK_MECHANISM_PTR. Wire: mechanism.
	Mechanism
	// OutUlong is a CK_ULONG_PTR output (a new handle, a size). The module
	// refuses a NULL pointer. Reply: u64.
	OutUlong
	// OutBytes is an output byte string under the size-query convention:
	// (CK_BYTE_PTR p, CK_ULONG_PTR len). Request: outspec; reply: outbytes.
	OutBytes
	// OutUlongs is an output CK_ULONG array under the size-query convention
	// (slot list, mechanism list): (CK_ULONG_PTR list, CK_ULONG_PTR count).
	// Request: outspec; reply: outulongs.
	OutUlongs
	// OutHandles is C_FindObjects' (CK_OBJECT_HANDLE_PTR, CK_ULONG max,
	// CK_ULONG_PTR count). Request: u64 max; reply: ulongs.
	OutHandles
	// AttrQuery is C_GetAttributeValue's in-out template:
	// (CK_ATTRIBUTE_PTR, CK_ULONG). Request: query; reply: answers.
	AttrQuery
	// OutStruct is a pointer to a fixed structure the daemon fills: the
	// structure is named by Arg.Struct. Reply: the structure's fields.
	OutStruct
	// Ignored is a parameter that does not travel (pApplication, Notify).
	Ignored
	// Reserved is a parameter that must be NULL (C_WaitForSlotEvent's
	// pReserved); anything else gets CKR_ARGUMENTS_BAD.
	Reserved
	// OutFilled is an output buffer whose length the caller fixes and the
	// daemon fills completely: (CK_BYTE_PTR p, CK_ULONG len), as in
	// C_GenerateRandom. There is no size query. Request: u64 length;
	// reply: bytes of exactly that length.
	OutFilled
	// MsgParam is a message-based call's parameter (PKCS#11 3.0):
	// (CK_VOID_PTR pParameter, CK_ULONG ulParameterLen), an input. The
	// module reads it as the structure of Arg.Structs whose size is
	// ulParameterLen, or else as bytes. Request: msgparam.
	MsgParam
	// MsgParamOut is a MsgParam the call also writes back: the fields a
	// structure marks FInOut or FOutOnly (a generated IV, an encryption's
	// tag). Request: msgparam; reply: msgout.
	MsgParamOut
	// OptOutBytes is an output byte string whose length pointer may be
	// NULL, which says the call produces no output (C_SignMessageNext
	// before the last part): (CK_BYTE_PTR p, CK_ULONG_PTR len). With a
	// length pointer, the size-query convention holds. Request: u8 wanted
	// (0 for a NULL length pointer), then when wanted an outspec; reply:
	// u8 wanted, then when wanted outbytes.
	OptOutBytes
)

// Arg is one argument of a call, spanning one or more C parameters.
type Arg struct {
	Name   string
	Kind   Kind
	CType  string // C type of a Ulong/Byte/OutUlong/Ignored/Reserved parameter
	Struct string // OutStruct: name of the structure in Structs
	// Short marks a Bytes argument that is never data, a PIN or a user
	// name: the daemon bounds it far below the data arguments
	// (wire.MaxShortBytes).
	Short bool
	// Structs: for MsgParam and MsgParamOut, the structures of
	// MessageParams the parameter may be, told apart by their sizes.
	Structs []string
	// Message: a Mechanism of a message-based Init. For the mechanisms of
	// MessageMechanisms the parameter, if any, is the message parameter
	// structure named there, which does not travel (each message brings
	// its own); every other mechanism's travels as for any Init.
	Message bool
	// Mech: a MsgParam or MsgParamOut that is a whole CK_MECHANISM_PTR
	// whose parameter is a message parameter structure (PKCS#11 3.2's
	// C_WrapKeyAuthenticated and C_UnwrapKeyAuthenticated). The mechanism
	// type travels first (u64), then its pParameter as a msgparam; the
	// reply of a MsgParamOut writes back into that parameter.
	Mech bool
}

// Mode says who answers a call.
type Mode int

const (
	Forwarded Mode = iota
	Local
	Unsupported
)

// Call is one PKCS#11 function.
type Call struct {
	ID      uint32 // wire call number; stable forever
	Name    string
	Mode    Mode
	Version int // 2 for the 2.40 list, 3 for the 3.0 additions, 4 for the 3.2 ones
	Args    []Arg
}

func u(name, ctype string) Arg    { return Arg{Name: name, Kind: Ulong, CType: ctype} }
func sess() Arg                   { return u("session", "CK_SESSION_HANDLE") }
func key(name string) Arg         { return u(name, "CK_OBJECT_HANDLE") }
func in(name string) Arg          { return Arg{Name: name, Kind: Bytes} }
func pin(name string) Arg         { return Arg{Name: name, Kind: Bytes, Short: true} }
func out(name string) Arg         { return Arg{Name: name, Kind: OutBytes} }
func outU(name, ctype string) Arg { return Arg{Name: name, Kind: OutUlong, CType: ctype} }
func tmpl(name string) Arg        { return Arg{Name: name, Kind: Template} }
func mech() Arg                   { return Arg{Name: "mechanism", Kind: Mechanism} }
func outS(name, st string) Arg    { return Arg{Name: name, Kind: OutStruct, Struct: st} }
func msgMech() Arg                { return Arg{Name: "mechanism", Kind: Mechanism, Message: true} }
func optOut(name string) Arg      { return Arg{Name: name, Kind: OptOutBytes} }

// aeadParam is the parameter of a message-based encryption or decryption
// call: an AEAD's message parameter structure; out says the call writes it
// back (encryption).
func aeadParam(out bool) Arg {
	a := Arg{Name: "parameter", Kind: MsgParam, Structs: MessageParams}
	if out {
		a.Kind = MsgParamOut
	}
	return a
}

// wrapMech is the mechanism of an authenticated wrap (out) or unwrap:
// its parameter is an AEAD's message parameter structure, which the wrap
// writes back (the IV it made, the tag).
func wrapMech(out bool) Arg {
	a := aeadParam(out)
	a.Name, a.Mech = "mechanism", true
	return a
}

// sigParam is the parameter of a message-based signature or verification
// call. No signature mechanism has one (PKCS#11 3.0 defines none): it
// travels as bytes, for the daemon to refuse.
func sigParam() Arg { return Arg{Name: "parameter", Kind: MsgParam} }

// Table lists every function, in CK_FUNCTION_LIST_3_2 order (which
// begins with CK_FUNCTION_LIST_3_0's, which begins with
// CK_FUNCTION_LIST's).
var Table = []Call{
	{1, "C_Initialize", Local, 2, []Arg{{Name: "initArgs", Kind: Ignored, CType: "CK_VOID_PTR"}}},
	{2, "C_Finalize", Local, 2, []Arg{{Name: "reserved", Kind: Ignored, CType: "CK_VOID_PTR"}}},
	{3, "C_GetInfo", Local, 2, []Arg{outS("info", "CK_INFO")}},
	{4, "C_GetFunctionList", Local, 2, nil},
	{5, "C_GetSlotList", Forwarded, 2, []Arg{{Name: "tokenPresent", Kind: Byte, CType: "CK_BBOOL"}, {Name: "slotList", Kind: OutUlongs}}},
	{6, "C_GetSlotInfo", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), outS("info", "CK_SLOT_INFO")}},
	{7, "C_GetTokenInfo", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), outS("info", "CK_TOKEN_INFO")}},
	{8, "C_GetMechanismList", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), {Name: "mechanismList", Kind: OutUlongs}}},
	{9, "C_GetMechanismInfo", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), u("type", "CK_MECHANISM_TYPE"), outS("info", "CK_MECHANISM_INFO")}},
	{10, "C_InitToken", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), pin("pin"), {Name: "label", Kind: Label}}},
	{11, "C_InitPIN", Forwarded, 2, []Arg{sess(), pin("pin")}},
	{12, "C_SetPIN", Forwarded, 2, []Arg{sess(), pin("oldPin"), pin("newPin")}},
	{13, "C_OpenSession", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID"), u("flags", "CK_FLAGS"),
		{Name: "application", Kind: Ignored, CType: "CK_VOID_PTR"}, {Name: "notify", Kind: Ignored, CType: "CK_NOTIFY"},
		outU("session", "CK_SESSION_HANDLE")}},
	{14, "C_CloseSession", Forwarded, 2, []Arg{sess()}},
	{15, "C_CloseAllSessions", Forwarded, 2, []Arg{u("slotID", "CK_SLOT_ID")}},
	{16, "C_GetSessionInfo", Forwarded, 2, []Arg{sess(), outS("info", "CK_SESSION_INFO")}},
	{17, "C_GetOperationState", Unsupported, 2, []Arg{sess(), out("state")}},
	{18, "C_SetOperationState", Unsupported, 2, []Arg{sess(), in("state"), key("encryptionKey"), key("authenticationKey")}},
	{19, "C_Login", Forwarded, 2, []Arg{sess(), u("userType", "CK_USER_TYPE"), pin("pin")}},
	{20, "C_Logout", Forwarded, 2, []Arg{sess()}},
	{21, "C_CreateObject", Forwarded, 2, []Arg{sess(), tmpl("template"), outU("object", "CK_OBJECT_HANDLE")}},
	{22, "C_CopyObject", Forwarded, 2, []Arg{sess(), key("object"), tmpl("template"), outU("newObject", "CK_OBJECT_HANDLE")}},
	{23, "C_DestroyObject", Forwarded, 2, []Arg{sess(), key("object")}},
	{24, "C_GetObjectSize", Forwarded, 2, []Arg{sess(), key("object"), outU("size", "CK_ULONG")}},
	{25, "C_GetAttributeValue", Forwarded, 2, []Arg{sess(), key("object"), {Name: "template", Kind: AttrQuery}}},
	{26, "C_SetAttributeValue", Forwarded, 2, []Arg{sess(), key("object"), tmpl("template")}},
	{27, "C_FindObjectsInit", Forwarded, 2, []Arg{sess(), tmpl("template")}},
	{28, "C_FindObjects", Forwarded, 2, []Arg{sess(), {Name: "objects", Kind: OutHandles}}},
	{29, "C_FindObjectsFinal", Forwarded, 2, []Arg{sess()}},
	{30, "C_EncryptInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{31, "C_Encrypt", Forwarded, 2, []Arg{sess(), in("data"), out("encryptedData")}},
	{32, "C_EncryptUpdate", Forwarded, 2, []Arg{sess(), in("part"), out("encryptedPart")}},
	{33, "C_EncryptFinal", Forwarded, 2, []Arg{sess(), out("lastEncryptedPart")}},
	{34, "C_DecryptInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{35, "C_Decrypt", Forwarded, 2, []Arg{sess(), in("encryptedData"), out("data")}},
	{36, "C_DecryptUpdate", Forwarded, 2, []Arg{sess(), in("encryptedPart"), out("part")}},
	{37, "C_DecryptFinal", Forwarded, 2, []Arg{sess(), out("lastPart")}},
	{38, "C_DigestInit", Forwarded, 2, []Arg{sess(), mech()}},
	{39, "C_Digest", Forwarded, 2, []Arg{sess(), in("data"), out("digest")}},
	{40, "C_DigestUpdate", Forwarded, 2, []Arg{sess(), in("part")}},
	{41, "C_DigestKey", Forwarded, 2, []Arg{sess(), key("key")}},
	{42, "C_DigestFinal", Forwarded, 2, []Arg{sess(), out("digest")}},
	{43, "C_SignInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{44, "C_Sign", Forwarded, 2, []Arg{sess(), in("data"), out("signature")}},
	{45, "C_SignUpdate", Forwarded, 2, []Arg{sess(), in("part")}},
	{46, "C_SignFinal", Forwarded, 2, []Arg{sess(), out("signature")}},
	{47, "C_SignRecoverInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{48, "C_SignRecover", Forwarded, 2, []Arg{sess(), in("data"), out("signature")}},
	{49, "C_VerifyInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{50, "C_Verify", Forwarded, 2, []Arg{sess(), in("data"), in("signature")}},
	{51, "C_VerifyUpdate", Forwarded, 2, []Arg{sess(), in("part")}},
	{52, "C_VerifyFinal", Forwarded, 2, []Arg{sess(), in("signature")}},
	{53, "C_VerifyRecoverInit", Forwarded, 2, []Arg{sess(), mech(), key("key")}},
	{54, "C_VerifyRecover", Forwarded, 2, []Arg{sess(), in("signature"), out("data")}},
	{55, "C_DigestEncryptUpdate", Unsupported, 2, []Arg{sess(), in("part"), out("encryptedPart")}},
	{56, "C_DecryptDigestUpdate", Unsupported, 2, []Arg{sess(), in("encryptedPart"), out("part")}},
	{57, "C_SignEncryptUpdate", Unsupported, 2, []Arg{sess(), in("part"), out("encryptedPart")}},
	{58, "C_DecryptVerifyUpdate", Unsupported, 2, []Arg{sess(), in("encryptedPart"), out("part")}},
	{59, "C_GenerateKey", Forwarded, 2, []Arg{sess(), mech(), tmpl("template"), outU("key", "CK_OBJECT_HANDLE")}},
	{60, "C_GenerateKeyPair", Forwarded, 2, []Arg{sess(), mech(), tmpl("publicKeyTemplate"), tmpl("privateKeyTemplate"),
		outU("publicKey", "CK_OBJECT_HANDLE"), outU("privateKey", "CK_OBJECT_HANDLE")}},
	{61, "C_WrapKey", Forwarded, 2, []Arg{sess(), mech(), key("wrappingKey"), key("key"), out("wrappedKey")}},
	{62, "C_UnwrapKey", Forwarded, 2, []Arg{sess(), mech(), key("unwrappingKey"), in("wrappedKey"), tmpl("template"), outU("key", "CK_OBJECT_HANDLE")}},
	{63, "C_DeriveKey", Forwarded, 2, []Arg{sess(), mech(), key("baseKey"), tmpl("template"), outU("key", "CK_OBJECT_HANDLE")}},
	{64, "C_SeedRandom", Forwarded, 2, []Arg{sess(), in("seed")}},
	{65, "C_GenerateRandom", Forwarded, 2, []Arg{sess(), {Name: "randomData", Kind: OutFilled}}},
	{66, "C_GetFunctionStatus", Local, 2, []Arg{sess()}},
	{67, "C_CancelFunction", Local, 2, []Arg{sess()}},
	{68, "C_WaitForSlotEvent", Forwarded, 2, []Arg{u("flags", "CK_FLAGS"), outU("slot", "CK_SLOT_ID"), {Name: "reserved", Kind: Reserved, CType: "CK_VOID_PTR"}}},

	// PKCS#11 3.0 additions, in CK_FUNCTION_LIST_3_0 order.
	{69, "C_GetInterfaceList", Local, 3, nil},
	{70, "C_GetInterface", Local, 3, nil},
	{71, "C_LoginUser", Forwarded, 3, []Arg{sess(), u("userType", "CK_USER_TYPE"), pin("pin"), pin("username")}},
	{72, "C_SessionCancel", Forwarded, 3, []Arg{sess(), u("flags", "CK_FLAGS")}},
	{73, "C_MessageEncryptInit", Forwarded, 3, []Arg{sess(), msgMech(), key("key")}},
	{74, "C_EncryptMessage", Forwarded, 3, []Arg{sess(), aeadParam(true), in("associatedData"), in("plaintext"), out("ciphertext")}},
	{75, "C_EncryptMessageBegin", Forwarded, 3, []Arg{sess(), aeadParam(true), in("associatedData")}},
	{76, "C_EncryptMessageNext", Forwarded, 3, []Arg{sess(), aeadParam(true), in("plaintextPart"), out("ciphertextPart"), u("flags", "CK_FLAGS")}},
	{77, "C_MessageEncryptFinal", Forwarded, 3, []Arg{sess()}},
	{78, "C_MessageDecryptInit", Forwarded, 3, []Arg{sess(), msgMech(), key("key")}},
	{79, "C_DecryptMessage", Forwarded, 3, []Arg{sess(), aeadParam(false), in("associatedData"), in("ciphertext"), out("plaintext")}},
	{80, "C_DecryptMessageBegin", Forwarded, 3, []Arg{sess(), aeadParam(false), in("associatedData")}},
	{81, "C_DecryptMessageNext", Forwarded, 3, []Arg{sess(), aeadParam(false), in("ciphertextPart"), out("plaintextPart"), u("flags", "CK_FLAGS")}},
	{82, "C_MessageDecryptFinal", Forwarded, 3, []Arg{sess()}},
	{83, "C_MessageSignInit", Forwarded, 3, []Arg{sess(), msgMech(), key("key")}},
	{84, "C_SignMessage", Forwarded, 3, []Arg{sess(), sigParam(), in("data"), out("signature")}},
	{85, "C_SignMessageBegin", Forwarded, 3, []Arg{sess(), sigParam()}},
	{86, "C_SignMessageNext", Forwarded, 3, []Arg{sess(), sigParam(), in("data"), optOut("signature")}},
	{87, "C_MessageSignFinal", Forwarded, 3, []Arg{sess()}},
	{88, "C_MessageVerifyInit", Forwarded, 3, []Arg{sess(), msgMech(), key("key")}},
	{89, "C_VerifyMessage", Forwarded, 3, []Arg{sess(), sigParam(), in("data"), in("signature")}},
	{90, "C_VerifyMessageBegin", Forwarded, 3, []Arg{sess(), sigParam()}},
	{91, "C_VerifyMessageNext", Forwarded, 3, []Arg{sess(), sigParam(), in("data"), in("signature")}},
	{92, "C_MessageVerifyFinal", Forwarded, 3, []Arg{sess()}},

	// PKCS#11 3.2 additions, in CK_FUNCTION_LIST_3_2 order (3.2 §5:
	// "Key management functions", "Functions for verifying signatures and
	// MACs", "Session management functions", "Asynchronous function
	// management functions"). The asynchronous functions are the module's
	// own: hsmemu runs every call synchronously, so they answer
	// CKR_FUNCTION_NOT_SUPPORTED there.
	{93, "C_EncapsulateKey", Forwarded, 4, []Arg{sess(), mech(), key("publicKey"), tmpl("template"), out("ciphertext"), outU("key", "CK_OBJECT_HANDLE")}},
	{94, "C_DecapsulateKey", Forwarded, 4, []Arg{sess(), mech(), key("privateKey"), tmpl("template"), in("ciphertext"), outU("key", "CK_OBJECT_HANDLE")}},
	{95, "C_VerifySignatureInit", Forwarded, 4, []Arg{sess(), mech(), key("key"), in("signature")}},
	{96, "C_VerifySignature", Forwarded, 4, []Arg{sess(), in("data")}},
	{97, "C_VerifySignatureUpdate", Forwarded, 4, []Arg{sess(), in("part")}},
	{98, "C_VerifySignatureFinal", Forwarded, 4, []Arg{sess()}},
	{99, "C_GetSessionValidationFlags", Forwarded, 4, []Arg{sess(), u("type", "CK_SESSION_VALIDATION_FLAGS_TYPE"), outU("flags", "CK_FLAGS")}},
	{100, "C_AsyncComplete", Local, 4, nil},
	{101, "C_AsyncGetID", Local, 4, nil},
	{102, "C_AsyncJoin", Local, 4, nil},
	{103, "C_WrapKeyAuthenticated", Forwarded, 4, []Arg{sess(), wrapMech(true), key("wrappingKey"), key("key"), in("associatedData"), out("wrappedKey")}},
	{104, "C_UnwrapKeyAuthenticated", Forwarded, 4, []Arg{sess(), wrapMech(false), key("unwrappingKey"), in("wrappedKey"), tmpl("template"), in("associatedData"), outU("key", "CK_OBJECT_HANDLE")}},
}

// ByID returns the call with wire number id.
func ByID(id uint32) (*Call, bool) {
	if id == 0 || int(id) > len(Table) {
		return nil, false
	}
	c := &Table[id-1]
	return c, c.ID == id
}

// inTable says whether c is the Table's own entry for its number, whose
// properties byID tables hold.
func inTable(c *Call) bool {
	return c.ID != 0 && int(c.ID) <= len(Table) && &Table[c.ID-1] == c
}

// byID tabulates a property of the Table's calls by call number, for
// the look-ups made on every request.
func byID[T any](of func(*Call) T) []T {
	t := make([]T, len(Table)+1)
	for i := range Table {
		t[Table[i].ID] = of(&Table[i])
	}
	return t
}

// ByName returns the call named name.
func ByName(name string) (*Call, bool) {
	for i := range Table {
		if Table[i].Name == name {
			return &Table[i], true
		}
	}
	return nil, false
}
