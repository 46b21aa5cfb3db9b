// Package admin serves the administrator's calls (`hsmemu token`, `key`,
// `secret`, `pin`, `audit`, `rotate`, `status`), whose wire contract is
// daemon/adminapi. Each call is a function in the ops table, wrapped by op
// or done: its arguments are decoded strictly (unknown fields refused),
// every byte slice in them (PINs, key material, secret values) is wiped
// after the call, and its error is mapped to the protocol's codes in one
// place (adminErr).
//
// The calls act on tokens through the token engine's exported API only:
// as the token's user for anything that makes or reads objects
// (token.Engine.AsUser: the same attribute rules, tier and audit records
// as an application's calls), with PIN checks counted and delayed like a
// login's (PINAttempt). They read the keystore directly for what the
// engine does not hold (soft-deleted objects, backups, the audit log).
package admin
