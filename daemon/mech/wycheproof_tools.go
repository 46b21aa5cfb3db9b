//go:build tools

package mech

// The Wycheproof test vectors are read from their module by the tests
// (mechtest.WycheproofFile); this import, never built, keeps the module
// in go.mod.
import _ "github.com/c2sp/wycheproof"
