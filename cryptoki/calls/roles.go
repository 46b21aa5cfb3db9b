package calls

import "hsmemu/cryptoki/ck"

// OpKinds is a set of the cryptographic operations a session can have in
// progress, one of each kind at a time.
type OpKinds uint16

const (
	OpEncrypt OpKinds = 1 << iota
	OpDecrypt
	OpDigest
	OpSign
	OpVerify
	OpSignRecover
	OpVerifyRecover
	// The message-based processes of PKCS#11 3.0 (C_MessageEncryptInit
	// to C_MessageEncryptFinal, ...), kinds of their own: one may run
	// beside an operation of the single- and multi-part functions.
	OpMessageEncrypt
	OpMessageDecrypt
	OpMessageSign
	OpMessageVerify
)

// MessageKinds are the message-based kinds. Their Inits are never
// deferred (docs/protocol.md, "Deferred Init"): a message-based process
// lives across many calls, and gains nothing from saving its Init's round
// trip.
const MessageKinds = OpMessageEncrypt | OpMessageDecrypt | OpMessageSign | OpMessageVerify

// CancelFlags are the C_SessionCancel flags (CK_MECHANISM_INFO's) that name
// the operations of kinds k, for the module's own cancels: OpVerify's
// CKF_VERIFY with VerifyInitOnly, since an application's CKF_VERIFY names
// C_VerifySignatureInit's verification too.
func CancelFlags(k OpKinds) uint64 {
	var f uint64
	for kind, flag := range map[OpKinds]uint64{
		OpEncrypt: ck.CKF_ENCRYPT, OpDecrypt: ck.CKF_DECRYPT, OpDigest: ck.CKF_DIGEST,
		OpSign: ck.CKF_SIGN, OpVerify: ck.CKF_VERIFY,
		OpSignRecover: ck.CKF_SIGN_RECOVER, OpVerifyRecover: ck.CKF_VERIFY_RECOVER,
		OpMessageEncrypt: ck.CKF_MESSAGE_ENCRYPT, OpMessageDecrypt: ck.CKF_MESSAGE_DECRYPT,
		OpMessageSign: ck.CKF_MESSAGE_SIGN, OpMessageVerify: ck.CKF_MESSAGE_VERIFY,
	} {
		if k&kind != 0 {
			f |= flag
		}
	}
	if k&OpVerify != 0 {
		f |= VerifyInitOnly
	}
	return f
}

// CancelCurrentMessage is a C_SessionCancel flag of the module's own, bit
// 63 of the wire's u64 (no CK_MECHANISM_INFO flag uses it, and the module
// clears it from an application's flags): with CKF_MESSAGE_ENCRYPT and
// kin it ends only the message in progress, not the message-based
// process. The module sends it when it refuses a message call's
// arguments itself, since an error ends the current message (PKCS#11 3.0,
// C_EncryptMessageNext) and the daemon must hear of it.
const CancelCurrentMessage = 1 << 63

// CollectUpdate is a C_SessionCancel flag of the module's own, bit 62
// (cleared from an application's flags as CancelCurrentMessage is): the
// module handed over the output that an Update's size query measured
// (docs/protocol.md, "Results ahead of the follow-up call"), so the
// daemon's kept output is delivered and the update done; the operation
// goes on. The operations it names are the cancel flags of their kinds
// shifted into bits 32 to 59 (CollectKinds), so that one frame may also
// end other operations with the low bits.
const CollectUpdate = 1 << 62

// CollectKinds are the bits of a C_SessionCancel flags word that, with
// CollectUpdate, name the operations whose Update output was collected.
const CollectKinds = 0x0fffffff << 32

// CancelVerifySignature is a C_SessionCancel flag of the module's own, bit
// 61 (cleared from an application's flags as CancelCurrentMessage is): it
// ends the verification C_VerifySignatureInit began (PKCS#11 3.2), an
// operation beside C_VerifyInit's that no CK_MECHANISM_INFO flag names
// apart (an application's CKF_VERIFY ends both). The module sends it for
// C_VerifySignatureInit given a NULL mechanism, which ends the operation
// (3.2), and when it refuses the arguments of a call that carries the
// operation on, which an error ends (VerifySignature).
const CancelVerifySignature = 1 << 61

// VerifyInitOnly is a C_SessionCancel flag of the module's own, bit 60
// (cleared from an application's flags as the others are): with
// CKF_VERIFY it ends only the verification C_VerifyInit began, not
// C_VerifySignatureInit's beside it. The module's own cancels of
// C_VerifyInit's (a NULL mechanism, refused arguments) carry it.
const VerifyInitOnly = 1 << 60

// ModuleCancelFlags are the C_SessionCancel flags of the module's own,
// never an application's to pass.
const ModuleCancelFlags = CancelCurrentMessage | CollectUpdate | CancelVerifySignature | VerifyInitOnly

// AbandonFlags are the C_SessionCancel flags that end what a call
// continuing operations of kinds k was working on when the module refuses
// its arguments: the operations, or for the message-based kinds their
// current message.
func AbandonFlags(k OpKinds) uint64 {
	f := CancelFlags(k)
	if k&MessageKinds != 0 {
		f |= CancelCurrentMessage
	}
	return f
}

// Role is what a call does to a session's operations and to what an
// earlier Init checked. The module defers an Init the daemon accepted
// before (docs/protocol.md, "Deferred Init") and needs to know which calls
// continue it, and after which calls an earlier Init's checks may no
// longer hold.
type Role struct {
	Starts    OpKinds // the Init of this kind
	Continues OpKinds // the calls that carry on or end an operation of these kinds
	// Mutates: objects may be destroyed or changed, logins or sessions
	// end. Inits deferred before it are sent before it.
	Mutates bool
	// Closes: the session named by the call ends.
	Closes bool
	// VerifySignature is the part the call plays in a verification with
	// the signature first, whose Init is never held back and which the
	// module ends with CancelVerifySignature.
	VerifySignature SignatureRole
}

// SignatureRole is a call's part in C_VerifySignatureInit's operation.
type SignatureRole uint8

const (
	// SignatureStarts: C_VerifySignatureInit (a NULL mechanism ends the
	// operation).
	SignatureStarts SignatureRole = iota + 1
	// SignatureContinues: C_VerifySignature, C_VerifySignatureUpdate and
	// C_VerifySignatureFinal (refused arguments end the operation).
	SignatureContinues
)

var roles = map[string]Role{
	"C_EncryptInit": {Starts: OpEncrypt},
	"C_DecryptInit": {Starts: OpDecrypt},
	"C_DigestInit":  {Starts: OpDigest},
	"C_SignInit":    {Starts: OpSign},
	"C_VerifyInit":  {Starts: OpVerify},
	// No mechanism here does these; the daemon refuses their Inits, so
	// they are never deferred.
	"C_SignRecoverInit":   {Starts: OpSignRecover},
	"C_VerifyRecoverInit": {Starts: OpVerifyRecover},

	"C_Encrypt":       {Continues: OpEncrypt},
	"C_EncryptUpdate": {Continues: OpEncrypt},
	"C_EncryptFinal":  {Continues: OpEncrypt},
	"C_Decrypt":       {Continues: OpDecrypt},
	"C_DecryptUpdate": {Continues: OpDecrypt},
	"C_DecryptFinal":  {Continues: OpDecrypt},
	"C_Digest":        {Continues: OpDigest},
	"C_DigestUpdate":  {Continues: OpDigest},
	"C_DigestKey":     {Continues: OpDigest},
	"C_DigestFinal":   {Continues: OpDigest},
	"C_Sign":          {Continues: OpSign},
	"C_SignUpdate":    {Continues: OpSign},
	"C_SignFinal":     {Continues: OpSign},
	"C_Verify":        {Continues: OpVerify},
	"C_VerifyUpdate":  {Continues: OpVerify},
	"C_VerifyFinal":   {Continues: OpVerify},
	"C_SignRecover":   {Continues: OpSignRecover},
	"C_VerifyRecover": {Continues: OpVerifyRecover},
	// The dual-function calls (C_DigestEncryptUpdate, ...) are not
	// supported: the module answers them itself, and they touch nothing.

	"C_MessageEncryptInit":  {Starts: OpMessageEncrypt},
	"C_EncryptMessage":      {Continues: OpMessageEncrypt},
	"C_EncryptMessageBegin": {Continues: OpMessageEncrypt},
	"C_EncryptMessageNext":  {Continues: OpMessageEncrypt},
	"C_MessageEncryptFinal": {Continues: OpMessageEncrypt},
	"C_MessageDecryptInit":  {Starts: OpMessageDecrypt},
	"C_DecryptMessage":      {Continues: OpMessageDecrypt},
	"C_DecryptMessageBegin": {Continues: OpMessageDecrypt},
	"C_DecryptMessageNext":  {Continues: OpMessageDecrypt},
	"C_MessageDecryptFinal": {Continues: OpMessageDecrypt},
	"C_MessageSignInit":     {Starts: OpMessageSign},
	"C_SignMessage":         {Continues: OpMessageSign},
	"C_SignMessageBegin":    {Continues: OpMessageSign},
	"C_SignMessageNext":     {Continues: OpMessageSign},
	"C_MessageSignFinal":    {Continues: OpMessageSign},
	"C_MessageVerifyInit":   {Starts: OpMessageVerify},
	"C_VerifyMessage":       {Continues: OpMessageVerify},
	"C_VerifyMessageBegin":  {Continues: OpMessageVerify},
	"C_VerifyMessageNext":   {Continues: OpMessageVerify},
	"C_MessageVerifyFinal":  {Continues: OpMessageVerify},

	"C_VerifySignatureInit":   {VerifySignature: SignatureStarts},
	"C_VerifySignature":       {VerifySignature: SignatureContinues},
	"C_VerifySignatureUpdate": {VerifySignature: SignatureContinues},
	"C_VerifySignatureFinal":  {VerifySignature: SignatureContinues},

	"C_DestroyObject":     {Mutates: true},
	"C_SetAttributeValue": {Mutates: true},
	"C_Logout":            {Mutates: true},
	"C_InitToken":         {Mutates: true},
	"C_CloseAllSessions":  {Mutates: true},
	// A session's objects end with it.
	"C_CloseSession": {Mutates: true, Closes: true},
}

// RoleOf returns c's role; most calls have none.
func RoleOf(c *Call) Role {
	if inTable(c) {
		return roleByID[c.ID]
	}
	return roles[c.Name]
}

// roleByID is roles by call number.
var roleByID = byID(func(c *Call) Role { return roles[c.Name] })

// OnSession says whether c's first argument is a session handle.
func OnSession(c *Call) bool {
	return len(c.Args) > 0 && c.Args[0].Name == "session"
}
