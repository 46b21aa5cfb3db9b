package calls

import "hsmemu/cryptoki/ck"

// OpKinds is a set of the cryptographic operations a session can have in
// progress, one of each kind at a time.
type OpKinds uint8

const (
	OpEncrypt OpKinds = 1 << iota
	OpDecrypt
	OpDigest
	OpSign
	OpVerify
	OpSignRecover
	OpVerifyRecover
)

// CancelFlags are the C_SessionCancel flags (CK_MECHANISM_INFO's) that name
// the operations of kinds k.
func CancelFlags(k OpKinds) uint64 {
	var f uint64
	for kind, flag := range map[OpKinds]uint64{
		OpEncrypt: ck.CKF_ENCRYPT, OpDecrypt: ck.CKF_DECRYPT, OpDigest: ck.CKF_DIGEST,
		OpSign: ck.CKF_SIGN, OpVerify: ck.CKF_VERIFY,
		OpSignRecover: ck.CKF_SIGN_RECOVER, OpVerifyRecover: ck.CKF_VERIFY_RECOVER,
	} {
		if k&kind != 0 {
			f |= flag
		}
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
}

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

	"C_Encrypt":             {Continues: OpEncrypt},
	"C_EncryptUpdate":       {Continues: OpEncrypt},
	"C_EncryptFinal":        {Continues: OpEncrypt},
	"C_Decrypt":             {Continues: OpDecrypt},
	"C_DecryptUpdate":       {Continues: OpDecrypt},
	"C_DecryptFinal":        {Continues: OpDecrypt},
	"C_Digest":              {Continues: OpDigest},
	"C_DigestUpdate":        {Continues: OpDigest},
	"C_DigestKey":           {Continues: OpDigest},
	"C_DigestFinal":         {Continues: OpDigest},
	"C_Sign":                {Continues: OpSign},
	"C_SignUpdate":          {Continues: OpSign},
	"C_SignFinal":           {Continues: OpSign},
	"C_Verify":              {Continues: OpVerify},
	"C_VerifyUpdate":        {Continues: OpVerify},
	"C_VerifyFinal":         {Continues: OpVerify},
	"C_SignRecover":         {Continues: OpSignRecover},
	"C_VerifyRecover":       {Continues: OpVerifyRecover},
	"C_DigestEncryptUpdate": {Continues: OpDigest | OpEncrypt},
	"C_DecryptDigestUpdate": {Continues: OpDecrypt | OpDigest},
	"C_SignEncryptUpdate":   {Continues: OpSign | OpEncrypt},
	"C_DecryptVerifyUpdate": {Continues: OpDecrypt | OpVerify},

	"C_DestroyObject":     {Mutates: true},
	"C_SetAttributeValue": {Mutates: true},
	"C_Logout":            {Mutates: true},
	"C_InitToken":         {Mutates: true},
	"C_CloseAllSessions":  {Mutates: true},
	// A session's objects end with it.
	"C_CloseSession": {Mutates: true, Closes: true},
}

// RoleOf returns c's role; most calls have none.
func RoleOf(c *Call) Role { return roles[c.Name] }

// OnSession says whether c's first argument is a session handle.
func OnSession(c *Call) bool {
	return len(c.Args) > 0 && c.Args[0].Name == "session"
}
