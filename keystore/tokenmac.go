package keystore

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
)

// A token row's integrity: its MAC, in the current and the earlier form,
// and the range checks made before the MAC is tried.

// tokenMAC authenticates every column of a token row but its row id: the
// uuid, tier, generations (data key, KEK, master key), label, serial, the
// failure counters, both PIN records, the legacy PIN keys, the deletion
// policy, the creation time and the login epoch. Editing any of them alone is detected;
// replaying a whole earlier row is not (see docs/keychain.md). The row id
// is the key objects refer to their token by: changing it hides the
// token's objects, which whoever holds the file can do by deleting them,
// and puts another token's objects under it, whose seals name their own
// token and fail.
func tokenMAC(keys *tokenKeys, ti *TokenInfo) []byte {
	m := hmac.New(sha256.New, keys.macKey)
	m.Write(tokenMACInput(ti))
	return m.Sum(nil)
}

// tokenMACInput is what a token row's MAC covers: every field that carries
// policy or keys, each at its column's full width (64 bits, signed where
// the column is), byte strings with their 64-bit length. The one optional
// field is the login epoch, which comes last, tagged, once a logout of
// every daemon set it: the fields before it delimit themselves, so no row
// with an epoch shares its input with one without, and a row that never
// had one keeps the MAC it had. A row written by an earlier version, under
// tokenMACv2, still verifies (tokenMACOK); every write uses this form.
func tokenMACInput(ti *TokenInfo) []byte {
	b := []byte("hsmemu/token/v3")
	b = append(b, ti.UUID[:]...)
	for _, v := range []int64{int64(ti.Tier), int64(ti.KEKGeneration), int64(ti.DataGeneration),
		int64(ti.MasterGeneration), int64(ti.SOFailures), int64(ti.UserFailures), int64(ti.RetentionDays),
		ti.Created.Unix()} {
		b = binary.BigEndian.AppendUint64(b, uint64(v))
	}
	if ti.PurgeProtection {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	for _, f := range [][]byte{[]byte(ti.Label), []byte(ti.Serial), ti.soPIN} {
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	for _, f := range [][]byte{ti.userPIN, ti.legacyPINKeys} {
		if f == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		b = binary.BigEndian.AppendUint64(b, uint64(len(f)))
		b = append(b, f...)
	}
	if ti.LoginEpoch != 0 {
		b = append(b, "login-epoch"...)
		b = binary.BigEndian.AppendUint64(b, uint64(ti.LoginEpoch))
	}
	return b
}

// tokenMACOK checks a row's MAC: the current form, or the form rows had
// before it. The earlier form covered the counters and the retention as 32
// bits, so values 2^32 apart shared a MAC; it is accepted only for rows
// whose values scanToken found in range, where no two such values exist,
// and without a login epoch, which came after it and which it does not
// cover.
func tokenMACOK(keys *tokenKeys, ti *TokenInfo) bool {
	return hmac.Equal(tokenMAC(keys, ti), ti.mac) || (ti.LoginEpoch == 0 && hmac.Equal(tokenMACv2(keys, ti), ti.mac))
}

// tokenMACv2 is the MAC rows had before tokenMACInput's form.
func tokenMACv2(keys *tokenKeys, ti *TokenInfo) []byte {
	m := hmac.New(sha256.New, keys.macKey)
	m.Write([]byte("hsmemu/token/v2"))
	m.Write(ti.UUID[:])
	var b []byte
	b = append(b, byte(ti.Tier))
	b = binary.BigEndian.AppendUint32(b, ti.KEKGeneration)
	b = binary.BigEndian.AppendUint32(b, ti.DataGeneration)
	b = binary.BigEndian.AppendUint32(b, uint32(ti.SOFailures))
	b = binary.BigEndian.AppendUint32(b, uint32(ti.UserFailures))
	for _, f := range [][]byte{[]byte(ti.Label), []byte(ti.Serial), ti.soPIN} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	if ti.userPIN == nil {
		b = append(b, 0)
	} else {
		b = append(b, 1)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ti.userPIN)))
		b = append(b, ti.userPIN...)
	}
	if ti.RetentionDays != DefaultRetentionDays || ti.PurgeProtection {
		b = append(b, "policy"...)
		b = binary.BigEndian.AppendUint32(b, uint32(ti.RetentionDays))
		if ti.PurgeProtection {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	}
	if ti.MasterGeneration > 1 {
		b = append(b, "master"...)
		b = binary.BigEndian.AppendUint32(b, ti.MasterGeneration)
	}
	if ti.legacyPINKeys != nil {
		b = append(b, "legacy"...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(ti.legacyPINKeys)))
		b = append(b, ti.legacyPINKeys...)
	}
	m.Write(b)
	return m.Sum(nil)
}

// MaxStoredFailures bounds a role's failure count in a token row: it
// stops counting at the lock, far below this.
const MaxStoredFailures = 1 << 20

// checkTokenRange range-checks a row's decoded values, before its MAC is
// tried: a value no write of ours makes is tampering, whatever the MAC.
func checkTokenRange(ti *TokenInfo, tier int64) error {
	switch {
	case tier != int64(TierStandard) && tier != int64(TierPremium),
		ti.SOFailures < 0 || ti.SOFailures > MaxStoredFailures,
		ti.UserFailures < 0 || ti.UserFailures > MaxStoredFailures,
		ti.RetentionDays < 0 || ti.RetentionDays > MaxRetentionDays,
		ti.KEKGeneration < 1, ti.DataGeneration < 1, ti.MasterGeneration < 1,
		len(ti.Label) == 0 || len(ti.Label) > 32:
		return tampered("token", ti.UUID, ti.ID, "range")
	}
	return nil
}

// UpgradeMACs rewrites, under the current form, the MAC of every token
// row still under the earlier one (tokenMACv2), which left the creation
// time and a missing legacy key list uncovered. The daemon calls it once
// attached, so an earlier form lasts no longer than the first start of
// this version. Tampered rows are left as they are. It returns how many
// rows it rewrote.
func (s *Store) UpgradeMACs(ctx context.Context) (int, error) {
	s.rot.RLock()
	defer s.rot.RUnlock()
	list, err := s.Tokens(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, ti := range list {
		if ti.Tampered != nil {
			continue
		}
		// The token's lock, as a write to it takes (tokenrot.go): a
		// master key rotation may be rekeying another.
		// Released however the upgrade ends (a panic too).
		rewrote, err := func() (bool, error) {
			l := s.tokenRot(ti.UUID)
			l.RLock()
			defer l.RUnlock()
			return s.upgradeMAC(ctx, ti)
		}()
		if !rewrote {
			if err != nil {
				return n, err
			}
			continue
		}
		if errors.Is(err, ErrTampered) {
			continue // edited since the listing: noted by the read
		}
		if err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// upgradeMAC rewrites the token row's MAC when it is not under the
// current form, and reports whether it tried; the token's lock is
// read-held.
func (s *Store) upgradeMAC(ctx context.Context, ti TokenInfo) (bool, error) {
	st, err := s.state(ctx, ti.ID)
	if err != nil {
		return false, err
	}
	s.mu.RLock()
	keys := st.keys
	s.mu.RUnlock()
	if hmac.Equal(tokenMAC(keys, &ti), ti.mac) {
		return false, nil
	}
	return true, s.updateToken(ctx, ti.UUID, func(cur *TokenInfo) error { return nil })
}
