package ck

import "fmt"

// MechanismName is a mechanism's C name ("CKM_ECDSA"), or its value in hex
// for one this package does not define.
func MechanismName(m uint64) string { return nameOr(mechNames, m) }

// IsMechanism says whether PKCS#11 names mechanism m (a CKM_ constant).
func IsMechanism(m uint64) bool {
	_, ok := mechNames[m]
	return ok
}

// KeyTypeName is a key type's C name ("CKK_AES"), or its value in hex.
func KeyTypeName(k uint64) string { return nameOr(keyTypeNames, k) }

// ClassName is an object class's C name ("CKO_CERTIFICATE"), or its
// value in hex.
func ClassName(c uint64) string { return nameOr(classNames, c) }

func nameOr(m map[uint64]string, v uint64) string {
	if n, ok := m[v]; ok {
		return n
	}
	return fmt.Sprintf("0x%x", v)
}
