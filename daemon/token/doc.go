// Package token is hsmemu's token engine: everything PKCS#11 means,
// behind the module's calls. It holds the applications (one per
// initialised client process, shared by all its connections), their
// sessions, handles and login state; the objects, token objects in the
// keystore and session objects in memory; the specification's attribute
// rules as one table with one routine per operation; the tiers and
// HSM-protected keys; PIN checks with their delays and lockout; and the
// operation state machine every mechanism shares: Init, the size-query
// convention, Update, Final, and when an operation ends.
//
// Dispatch serves one decoded call; its table is indexed by the call ids
// of cryptoki/calls and checked at start against every call the module
// forwards. The mechanisms themselves are daemon/mech's, handed a key
// (an Object, which is a mech.Key) only once the engine has checked that
// the caller may use it. Storage is reached through Store, the keystore
// methods the engine uses.
//
// The administrator's calls (daemon/admin) use a small exported API
// (admin.go): acting as a token's user, a PIN check counted like a
// login's, forgetting a deleted token, session counts and the audit log.
package token
