package token

import (
	"context"
	"time"

	"hsmemu/keystore"
)

// Store is what the engine needs of the keystore: tokens and their PINs,
// objects, soft deletion and the audit log. keystore.Store is one; a
// second storage engine plugs in here.
type Store interface {
	Tokens(ctx context.Context) ([]keystore.TokenInfo, error)
	Token(ctx context.Context, token keystore.UUID) (keystore.TokenInfo, error)
	TokenByID(ctx context.Context, id int64) (keystore.TokenInfo, error)
	CreateToken(ctx context.Context, spec keystore.TokenSpec) (keystore.TokenInfo, error)
	Reinit(ctx context.Context, token keystore.UUID, soPIN []byte, label string) error

	// Login opens the token's data key with role's PIN, counting a wrong
	// one; Logout closes it. Locked says whether a role is locked out.
	Login(ctx context.Context, token keystore.UUID, role keystore.Role, pin []byte) error
	Logout(token keystore.UUID)
	Locked(ti keystore.TokenInfo, role keystore.Role) bool
	// LogoutAll ends every login of the token on every daemon of the
	// keystore; OnLoginsEnded tells the engine of a login the keystore
	// ended on its own.
	LogoutAll(ctx context.Context, token keystore.UUID) (uint32, error)
	OnLoginsEnded(f func(token keystore.UUID))
	InitPIN(ctx context.Context, token keystore.UUID, newUserPIN []byte) error
	SetPIN(ctx context.Context, token keystore.UUID, role keystore.Role, oldPIN, newPIN []byte) error

	Find(ctx context.Context, token keystore.UUID, f keystore.Filter) ([]keystore.ObjectID, error)
	Open(ctx context.Context, id keystore.ObjectID) (*keystore.Object, error)
	// PutAudited, SoftDeleteAudited and PurgeExpiredAudited write a
	// token object's creation, deletion or purge and its audit record in
	// one transaction.
	PutAudited(ctx context.Context, token keystore.UUID, attrs keystore.Attributes, secret []byte, note func(object keystore.UUID) keystore.AuditNote) (*keystore.Object, error)
	Update(ctx context.Context, id keystore.ObjectID, attrs keystore.Attributes, secret []byte) error
	UpdateLocked(ctx context.Context, id keystore.ObjectID, change func(cur *keystore.Object) (keystore.Attributes, []byte, error)) error
	SoftDeleteAudited(ctx context.Context, id keystore.ObjectID, note func(kept bool) keystore.AuditNote) (kept bool, err error)
	PurgeExpiredAudited(ctx context.Context, now time.Time, note func(keystore.Deleted) keystore.AuditNote) ([]keystore.Deleted, error)

	Audit(ctx context.Context, actor keystore.AuditActor, event string, detail map[string]string) (keystore.AuditRecord, error)
	// AuditTamper records the integrity failures the reads above met and
	// skipped (or returned) since it was last called, once each.
	AuditTamper(ctx context.Context) error
}

var _ Store = (*keystore.Store)(nil)
