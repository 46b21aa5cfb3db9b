package keystore

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// A key backup is an opaque blob holding one key's objects (a secret key,
// or both halves of a pair) with their identities, attributes and
// material, encrypted under a key that the TPM root derives from the
// master key. Only a keystore of the same security domain (this one, a
// restored copy, or one recovered from the custodians' shares) can open
// it; the attributes come back unchanged, so an HSM-protected key stays
// HSM-protected.
//
//	"HSMUKB2\x00" | domain id u8-length-prefixed | key epoch u32 | nonce (12) | AES-256-GCM(plaintext)
//	plaintext: count u32 | per object: uuid (16) | attrs len u32 | attrs | secret len u32 | secret
//
// The header is the GCM's additional data. The key is the backup key of
// the epoch (one per master key, masterrotate.go) the backup was made in;
// "HSMUKB1\x00" blobs, without the epoch field, are of epoch 1.

const (
	keyBackupMagic   = "HSMUKB2\x00"
	keyBackupMagicV1 = "HSMUKB1\x00"
)

var keyBackupLabel = []byte("hsmemu/key-backup/v1")

// maxBackupObjects bounds a backup's objects: a key is one or two.
const maxBackupObjects = 16

// BackupObject is one object in a key backup.
type BackupObject struct {
	UUID   UUID
	Attrs  Attributes
	Secret []byte // nil without secret material
}

// ErrNotKeyBackup is a blob that is not a key backup, or was altered.
var ErrNotKeyBackup = errors.New("keystore: not a key backup of hsmemu, or altered")

// BackupDomainError refuses a backup of another security domain.
type BackupDomainError struct{ Backup, Keystore []byte }

func (e *BackupDomainError) Error() string {
	return fmt.Sprintf("keystore: the backup is of security domain %x, this keystore's is %x", e.Backup[:min(8, len(e.Backup))], e.Keystore[:min(8, len(e.Keystore))])
}

func (s *Store) backupAEAD(ctx context.Context, epoch uint32) (cipher.AEAD, error) {
	k, err := s.domainKey(ctx, epochLabel(keyBackupLabel, epoch))
	if err != nil {
		return nil, err
	}
	defer wipe(k)
	return newGCM(k)
}

// SealKeyBackup makes a backup blob of objects.
func (s *Store) SealKeyBackup(ctx context.Context, objs []BackupObject) ([]byte, error) {
	if len(objs) == 0 || len(objs) > maxBackupObjects {
		return nil, fmt.Errorf("keystore: a key backup holds 1 to %d objects", maxBackupObjects)
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.RLock()
	epoch := s.masterGen
	s.mu.RUnlock()
	a, err := s.backupAEAD(ctx, epoch)
	if err != nil {
		return nil, err
	}
	header := append([]byte(keyBackupMagic), byte(len(rec.DomainID)))
	header = append(header, rec.DomainID...)
	header = binary.BigEndian.AppendUint32(header, epoch)
	var plain []byte
	plain = binary.BigEndian.AppendUint32(plain, uint32(len(objs)))
	for _, o := range objs {
		enc := o.Attrs.Encode()
		plain = append(plain, o.UUID[:]...)
		plain = binary.BigEndian.AppendUint32(plain, uint32(len(enc)))
		plain = append(plain, enc...)
		plain = binary.BigEndian.AppendUint32(plain, uint32(len(o.Secret)))
		plain = append(plain, o.Secret...)
	}
	defer wipe(plain)
	nonce := make([]byte, a.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := append(header, nonce...)
	return a.Seal(out, nonce, plain, header), nil
}

// OpenKeyBackup opens a backup blob made in this security domain.
func (s *Store) OpenKeyBackup(ctx context.Context, blob []byte) ([]BackupObject, error) {
	if len(blob) < len(keyBackupMagic)+1 {
		return nil, ErrNotKeyBackup
	}
	var epochLen int
	switch string(blob[:len(keyBackupMagic)]) {
	case keyBackupMagic:
		epochLen = 4
	case keyBackupMagicV1:
	default:
		return nil, ErrNotKeyBackup
	}
	n := int(blob[len(keyBackupMagic)])
	dl := len(keyBackupMagic) + 1 + n
	hl := dl + epochLen
	if len(blob) < hl+12+16 {
		return nil, ErrNotKeyBackup
	}
	header, domain := blob[:hl], blob[len(keyBackupMagic)+1:dl]
	epoch := uint32(1)
	if epochLen > 0 {
		epoch = binary.BigEndian.Uint32(blob[dl:hl])
	}
	rec, err := s.RootRecord(ctx)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(domain, rec.DomainID) != 1 {
		return nil, &BackupDomainError{Backup: domain, Keystore: rec.DomainID}
	}
	s.mu.RLock()
	cur := s.masterGen
	s.mu.RUnlock()
	if epoch < 1 || epoch > cur {
		return nil, ErrNotKeyBackup
	}
	a, err := s.backupAEAD(ctx, epoch)
	if err != nil {
		return nil, err
	}
	nonce := blob[hl : hl+a.NonceSize()]
	plain, err := a.Open(nil, nonce, blob[hl+a.NonceSize():], header)
	if err != nil {
		return nil, ErrNotKeyBackup
	}
	defer wipe(plain)
	return parseBackup(plain)
}

// parseBackup decodes a backup's plaintext, refusing any length that
// overruns it.
func parseBackup(p []byte) ([]BackupObject, error) {
	next := func(n int) ([]byte, bool) {
		if n < 0 || len(p) < n {
			return nil, false
		}
		b := p[:n]
		p = p[n:]
		return b, true
	}
	u32 := func() (int, bool) {
		b, ok := next(4)
		if !ok {
			return 0, false
		}
		return int(binary.BigEndian.Uint32(b)), true
	}
	count, ok := u32()
	if !ok || count < 1 || count > maxBackupObjects {
		return nil, ErrNotKeyBackup
	}
	out := make([]BackupObject, 0, count)
	for range count {
		var o BackupObject
		u, ok := next(16)
		if !ok {
			return nil, ErrNotKeyBackup
		}
		copy(o.UUID[:], u)
		n, ok := u32()
		enc, ok2 := next(n)
		if !ok || !ok2 {
			return nil, ErrNotKeyBackup
		}
		// The plaintext is wiped after parsing; the attributes, which
		// are not secret, get their own copy.
		attrs, err := DecodeAttributes(append([]byte(nil), enc...))
		if err != nil {
			return nil, ErrNotKeyBackup
		}
		o.Attrs = attrs
		n, ok = u32()
		sec, ok2 := next(n)
		if !ok || !ok2 {
			return nil, ErrNotKeyBackup
		}
		if n > 0 {
			o.Secret = append([]byte(nil), sec...)
		}
		out = append(out, o)
	}
	if len(p) != 0 {
		return nil, ErrNotKeyBackup
	}
	return out, nil
}
