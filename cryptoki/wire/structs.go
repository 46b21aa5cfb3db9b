package wire

import (
	"fmt"
	"unicode/utf8"

	"hsmemu/cryptoki/calls"
)

// Struct is one of the fixed structures of calls.Structs that a reply
// carries field by field: *Info, *SlotInfo, *TokenInfo, *SessionInfo or
// *MechanismInfo. Their Go fields follow the C members in order; character
// arrays are strings, blank-padded (or cut at a character boundary) to
// their width when encoded.
type Struct interface {
	// CType is the structure's C name, its key in calls.Structs.
	CType() string
	// members returns pointers to the fields, in C order.
	members() []any
}

// CKVersion is a CK_VERSION (named so beside the protocol's Version).
type CKVersion struct{ Major, Minor byte }

// Info is CK_INFO (answered by the module itself; here for completeness).
type Info struct {
	CryptokiVersion    CKVersion
	ManufacturerID     string
	Flags              uint64
	LibraryDescription string
	LibraryVersion     CKVersion
}

// SlotInfo is CK_SLOT_INFO.
type SlotInfo struct {
	SlotDescription string
	ManufacturerID  string
	Flags           uint64
	HardwareVersion CKVersion
	FirmwareVersion CKVersion
}

// TokenInfo is CK_TOKEN_INFO.
type TokenInfo struct {
	Label              string
	ManufacturerID     string
	Model              string
	SerialNumber       string
	Flags              uint64
	MaxSessionCount    uint64
	SessionCount       uint64
	MaxRwSessionCount  uint64
	RwSessionCount     uint64
	MaxPinLen          uint64
	MinPinLen          uint64
	TotalPublicMemory  uint64
	FreePublicMemory   uint64
	TotalPrivateMemory uint64
	FreePrivateMemory  uint64
	HardwareVersion    CKVersion
	FirmwareVersion    CKVersion
	UTCTime            string
}

// SessionInfo is CK_SESSION_INFO.
type SessionInfo struct {
	SlotID      uint64
	State       uint64
	Flags       uint64
	DeviceError uint64
}

// MechanismInfo is CK_MECHANISM_INFO.
type MechanismInfo struct {
	MinKeySize uint64
	MaxKeySize uint64
	Flags      uint64
}

// CType implements Struct.
func (*Info) CType() string { return "CK_INFO" }

// CType implements Struct.
func (*SlotInfo) CType() string { return "CK_SLOT_INFO" }

// CType implements Struct.
func (*TokenInfo) CType() string { return "CK_TOKEN_INFO" }

// CType implements Struct.
func (*SessionInfo) CType() string { return "CK_SESSION_INFO" }

// CType implements Struct.
func (*MechanismInfo) CType() string { return "CK_MECHANISM_INFO" }

func (s *Info) members() []any {
	return []any{&s.CryptokiVersion, &s.ManufacturerID, &s.Flags, &s.LibraryDescription, &s.LibraryVersion}
}

func (s *SlotInfo) members() []any {
	return []any{&s.SlotDescription, &s.ManufacturerID, &s.Flags, &s.HardwareVersion, &s.FirmwareVersion}
}

func (s *TokenInfo) members() []any {
	return []any{&s.Label, &s.ManufacturerID, &s.Model, &s.SerialNumber, &s.Flags,
		&s.MaxSessionCount, &s.SessionCount, &s.MaxRwSessionCount, &s.RwSessionCount,
		&s.MaxPinLen, &s.MinPinLen, &s.TotalPublicMemory, &s.FreePublicMemory,
		&s.TotalPrivateMemory, &s.FreePrivateMemory, &s.HardwareVersion, &s.FirmwareVersion, &s.UTCTime}
}

func (s *SessionInfo) members() []any {
	return []any{&s.SlotID, &s.State, &s.Flags, &s.DeviceError}
}

func (s *MechanismInfo) members() []any { return []any{&s.MinKeySize, &s.MaxKeySize, &s.Flags} }

// newStruct returns a zero structure of the named C type.
func newStruct(ctype string) (Struct, bool) {
	switch ctype {
	case "CK_INFO":
		return new(Info), true
	case "CK_SLOT_INFO":
		return new(SlotInfo), true
	case "CK_TOKEN_INFO":
		return new(TokenInfo), true
	case "CK_SESSION_INFO":
		return new(SessionInfo), true
	case "CK_MECHANISM_INFO":
		return new(MechanismInfo), true
	}
	return nil, false
}

// Pad returns s blank-padded to n bytes, as PKCS#11 character arrays are;
// a longer s is cut to at most n bytes at a UTF-8 character boundary.
func Pad(s string, n int) string {
	n = max(n, 0)
	if len(s) == n {
		return s
	}
	return string(appendPadded(make([]byte, 0, n), s, n))
}

func appendPadded(b []byte, s string, n int) []byte {
	n = max(n, 0)
	if len(s) > n {
		k := n
		for k > 0 && !utf8.RuneStart(s[k]) {
			k--
		}
		s = s[:k]
	}
	b = append(b, s...)
	for i := len(s); i < n; i++ {
		b = append(b, ' ')
	}
	return b
}

// mismatch reports a Go structure that does not follow calls.Structs: a
// broken invariant that the tests catch.
func mismatch(s Struct, i int) string {
	return fmt.Sprintf("wire: internal error: %s field %d does not match calls.Structs", s.CType(), i)
}

// appendStruct encodes s field by field as calls.Structs lays it out.
func appendStruct(b []byte, s Struct) []byte {
	spec := structFields(calls.Structs, s.CType())
	m := s.members()
	if len(m) != len(spec) {
		panic(mismatch(s, len(m)))
	}
	for i, f := range spec {
		switch p := m[i].(type) {
		case *uint64:
			if f.Kind != calls.FUlong {
				panic(mismatch(s, i))
			}
			b = appendU64(b, *p)
		case *CKVersion:
			if f.Kind != calls.FVersion {
				panic(mismatch(s, i))
			}
			b = append(b, p.Major, p.Minor)
		case *string:
			if f.Kind != calls.FChars {
				panic(mismatch(s, i))
			}
			b = appendPadded(b, *p, f.Size)
		default:
			panic(mismatch(s, i))
		}
	}
	return b
}

// structure decodes the fields of s (client side). Character arrays keep
// their padding, so that they re-encode to the same bytes.
func (r *reader) structure(s Struct) {
	spec := structFields(calls.Structs, s.CType())
	m := s.members()
	if len(m) != len(spec) {
		panic(mismatch(s, len(m)))
	}
	for i, f := range spec {
		switch p := m[i].(type) {
		case *uint64:
			if f.Kind != calls.FUlong {
				panic(mismatch(s, i))
			}
			*p = r.u64(f.Name)
		case *CKVersion:
			if f.Kind != calls.FVersion {
				panic(mismatch(s, i))
			}
			v := r.take(2, f.Name)
			if v != nil {
				*p = CKVersion{v[0], v[1]}
			}
		case *string:
			if f.Kind != calls.FChars {
				panic(mismatch(s, i))
			}
			*p = string(r.take(f.Size, f.Name))
		default:
			panic(mismatch(s, i))
		}
	}
}
