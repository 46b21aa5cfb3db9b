package keystore

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"golang.org/x/crypto/argon2"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

// The tests of TPM-bound PIN records use TPMs of their own, with the
// dictionary-attack parameters each needs, and read the TPM's counter.

// ownTPM is a managed swtpm for one test, with its DA parameters set, a
// master key provisioned and loaded, and a keystore attached to it.
func ownTPM(t *testing.T, da tpmroot.DAParams, opts Options) (*tpmroot.TPM, *tpmroot.Root, *Store, string) {
	t.Helper()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(da); err != nil {
		t.Fatal(err)
	}
	root, sealed := provisionOn(t, tpm)
	s, path := storeOn(t, root, sealed, newLocation(t), opts)
	return tpm, root, s, path
}

func provisionOn(t *testing.T, tpm *tpmroot.TPM) (*tpmroot.Root, []byte) {
	t.Helper()
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	sealed, _ := p.Sealed.MarshalBinary()
	return root, sealed
}

// storeOn opens a keystore at path attached to root (any Root), recording
// sealed as its root when it has none.
func storeOn(t *testing.T, root Root, sealed []byte, path string, opts Options) (*Store, string) {
	t.Helper()
	if opts.Argon2 == (Argon2Params{}) {
		opts.Argon2 = cheapArgon
	}
	s, err := openAt(ctx, path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	domain := root.(interface{ DomainID() []byte }).DomainID()
	if _, err := s.RootRecord(ctx); errors.Is(err, ErrNotProvisioned) {
		if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealed, DomainID: domain}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Attach(ctx, root, domain); err != nil {
		t.Fatal(err)
	}
	return s, path
}

func counter(t *testing.T, tpm *tpmroot.TPM) uint32 {
	t.Helper()
	da, err := tpm.DAInfo()
	if err != nil {
		t.Fatal(err)
	}
	return da.Counter
}

// storedPIN reads a role's PIN record from the database file.
func storedPIN(t *testing.T, path string, token UUID, role Role) []byte {
	t.Helper()
	col := "user_pin"
	if role == RoleSO {
		col = "so_pin"
	}
	var rec []byte
	if err := rawDB(t, path).QueryRow("SELECT "+col+" FROM tokens WHERE uuid = ?", token[:]).Scan(&rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestPINGuessesCountedByTPM is the test: a program that bypasses
// the daemon takes a token's PIN record from the SQLite file, loads its
// object under the SRK itself (go-tpm, nothing of hsmemu's), and presents
// authorisations derived from wrong PINs to TPM2_Unseal. After the TPM's
// configured number of tries it is locked out, and then the right PIN,
// through the keystore, is refused too, until the TPM recovers.
func TestPINGuessesCountedByTPM(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock, _ := tpmtest.StartSocket(t, filepath.Join(dir, "tpm"))
	spec := tpmroot.Spec{Kind: tpmroot.KindSwtpmSocket, Path: sock}
	const maxTries = 5
	tpm := tpmtest.Open(t, spec)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: maxTries, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := p.Sealed.MarshalBinary()
	root, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	path := newLocation(t)
	s, _ := storeOn(t, root, sealed, path, Options{})
	ti := newToken(t, s, "target")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	s.Close()
	root.Close()
	tpm.Close() // swtpm serves one connection at a time

	// The attacker: the record from the file, the TPM over its socket.
	rec := storedPIN(t, path, ti.UUID, RoleUser)
	if rec[0] != 3 {
		t.Fatalf("the user's PIN record is of version %d, want 3", rec[0])
	}
	params := Argon2Params{Time: binary.BigEndian.Uint32(rec[5:]), MemoryKiB: binary.BigEndian.Uint32(rec[9:]), Threads: rec[13]}
	salt := rec[14 : 14+16]
	tail := rec[pinRecordLen:]
	seal := tail[2 : 2+binary.BigEndian.Uint16(tail)]
	field := func(b []byte) ([]byte, []byte) {
		n := binary.BigEndian.Uint16(b)
		return b[2 : 2+n], b[2+n:]
	}
	rest := seal[5:] // "HSPN" | version
	_, rest = field(rest)
	public, rest := field(rest)
	private, _ := field(rest)
	authOf := func(pin []byte) []byte {
		st := argon2.IDKey(pin, salt, params.Time, params.MemoryKiB, params.Threads, 32)
		a, err := hkdf.Key(sha256.New, st, salt, "hsmemu/pin-tpm-auth/v1", 32)
		if err != nil {
			t.Fatal(err)
		}
		for i := range a {
			if a[i] == 0 { // tpmroot's authValue
				a[i] = 1
			}
		}
		return a
	}

	conn := tpmtest.Dial(t, sock)
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](public),
	}.Execute(conn)
	if err != nil {
		t.Fatal(err)
	}
	unseal := func(pin []byte) error {
		var err error
		for range 3 {
			_, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: obj.ObjectHandle, Name: obj.Name, Auth: tpm2.PasswordAuth(authOf(pin))}}.Execute(conn)
			if !errors.Is(err, tpm2.TPMRCRetry) {
				break
			}
		}
		return err
	}
	for i := range maxTries {
		if err := unseal([]byte{'g', byte('0' + i)}); !errors.Is(err, tpm2.TPMRCAuthFail) {
			t.Fatalf("guess %d: %v, want TPM_RC_AUTH_FAIL", i+1, err)
		}
	}
	for _, pin := range [][]byte{[]byte("one more"), userPIN} {
		if err := unseal(pin); !errors.Is(err, tpm2.TPMRCLockout) {
			t.Fatalf("after %d guesses, %q: %v, want TPM_RC_LOCKOUT", maxTries, pin, err)
		}
	}
	tpm2.FlushContext{FlushHandle: obj.ObjectHandle}.Execute(conn)
	tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(conn)
	conn.Close()

	// The daemon's way in, with the right PIN: refused while the TPM is
	// locked out, and not counted against the user.
	tpm = tpmtest.Open(t, spec)
	var back tpmroot.Sealed
	if err := back.UnmarshalBinary(sealed); err != nil {
		t.Fatal(err)
	}
	root, err = tpm.Load(&back)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	s, _ = storeOn(t, root, nil, path, Options{})
	err = s.Login(ctx, ti.UUID, RoleUser, userPIN)
	var le *TPMLockoutError
	if !errors.Is(err, ErrTPMLockout) || !errors.As(err, &le) {
		t.Fatalf("right PIN during the TPM's lockout: %v, want ErrTPMLockout", err)
	}
	if d := time.Until(le.Until); d < 50*time.Minute || d > time.Hour+time.Minute {
		t.Fatalf("lockout until %s, in %s; want about an hour", le.Until, d)
	}
	t.Log(err)
	if got, err := s.Token(ctx, ti.UUID); err != nil || got.UserFailures != 0 {
		t.Fatalf("the lockout counted against the user: %d, %v", got.UserFailures, err)
	}
}

// kekOnly is a root that derives KEKs and nothing else: a keystore
// attached to it writes version 2 PIN records, as before PINs were bound.
type kekOnly struct{ r *tpmroot.Root }

func (k kekOnly) DeriveKEK(label []byte) ([]byte, error) { return k.r.DeriveKEK(label) }
func (k kekOnly) DomainID() []byte                       { return k.r.DomainID() }

// TestPINMigration: a version 2 record opens at its role's next login and
// is rewritten bound to the TPM; after that a wrong PIN is counted by the
// TPM, and Argon2id alone no longer opens the record.
func TestPINMigration(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	root, sealed := provisionOn(t, tpm)
	path := newLocation(t)
	old, _ := storeOn(t, kekOnly{root}, sealed, path, Options{})
	if b := old.PINBinding(); b.Bound {
		t.Fatalf("a root without TPM objects binds PINs: %+v", b)
	}
	ti := newToken(t, old, "old")
	old.Close()
	for _, role := range []Role{RoleSO, RoleUser} {
		if v := storedPIN(t, path, ti.UUID, role)[0]; v != 2 {
			t.Fatalf("%s record of version %d, want 2", role, v)
		}
	}

	s, _ := storeOn(t, root, sealed, path, Options{})
	if b := s.PINBinding(); !b.Bound || !b.Recoverable {
		t.Fatalf("binding with a TPM root: %+v", b)
	}
	before := counter(t, tpm)
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	rec := storedPIN(t, path, ti.UUID, RoleUser)
	if rec[0] != 3 {
		t.Fatalf("user record of version %d after login, want 3", rec[0])
	}
	if v := storedPIN(t, path, ti.UUID, RoleSO)[0]; v != 2 {
		t.Fatalf("the SO's record (no SO login yet) is of version %d, want 2", v)
	}
	// The v2 way (Argon2id and the PIN key) does not open it any more.
	r, err := parsePINRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.state(ctx, ti.ID)
	if aead, err := pinAEAD(st.keys.pinKey, userPIN, r.salt, r.params); err == nil {
		if _, err := aead.Open(nil, r.nonce, r.sealed, r.aad(ti.UUID, RoleUser, ti.DataGeneration)); err == nil {
			t.Fatal("a bound record opens with Argon2id alone")
		}
	}
	s.Logout(ti.UUID)
	if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
		t.Fatal(err)
	}
	if got := counter(t, tpm); got != before+1 {
		t.Fatalf("DA counter %d after one wrong PIN, was %d", got, before)
	}
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	if err := s.Login(ctx, ti.UUID, RoleSO, soPIN); err != nil {
		t.Fatal(err)
	}
	if v := storedPIN(t, path, ti.UUID, RoleSO)[0]; v != 3 {
		t.Fatalf("SO record of version %d after the SO's login, want 3", v)
	}
}

// TestDaemonLockoutFirst: a role the keystore has locked is refused before
// anything reaches the TPM.
func TestDaemonLockoutFirst(t *testing.T) {
	t.Parallel()
	tpm, _, s, _ := ownTPM(t, tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}, Options{MaxPINFailures: 3})
	ti := newToken(t, s, "lock")
	before := counter(t, tpm)
	for range 3 {
		if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
			t.Fatal(err)
		}
	}
	if got := counter(t, tpm); got != before+3 {
		t.Fatalf("DA counter %d after 3 wrong PINs, was %d", got, before)
	}
	for _, pin := range [][]byte{[]byte("wrong"), userPIN} {
		if err := s.Login(ctx, ti.UUID, RoleUser, pin); !errors.Is(err, ErrPINLocked) {
			t.Fatalf("locked role: %v", err)
		}
	}
	if got := counter(t, tpm); got != before+3 {
		t.Fatalf("a locked role's attempts reached the TPM: counter %d, want %d", got, before+3)
	}
}

// countingRoot counts the PIN checks that reach the TPM.
type countingRoot struct {
	*tpmroot.Root
	unseals atomic.Int32
}

func (c *countingRoot) UnsealPINSecret(seal, auth []byte) ([]byte, error) {
	c.unseals.Add(1)
	return c.Root.UnsealPINSecret(seal, auth)
}

// TestPINCacheAndTPM: a PIN that opened its record is remembered with the
// TPM's secret, so logging in again skips the TPM; a wrong PIN always
// reaches it, and is counted there.
func TestPINCacheAndTPM(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	root, sealed := provisionOn(t, tpm)
	for _, tc := range []struct {
		name   string
		ttl    time.Duration
		cached bool
	}{{"cache", time.Minute, true}, {"no cache", -1, false}} {
		t.Run(tc.name, func(t *testing.T) {
			cr := &countingRoot{Root: root}
			s, _ := storeOn(t, cr, sealed, newLocation(t), Options{PINCacheTTL: tc.ttl})
			ti := newToken(t, s, "tok")
			n0, c0 := cr.unseals.Load(), counter(t, tpm)
			for i := range 3 {
				if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
					t.Fatal(err)
				}
				s.Logout(ti.UUID)
				want := int32(i + 1)
				if tc.cached {
					want = 1
				}
				if got := cr.unseals.Load() - n0; got != want {
					t.Fatalf("after %d logins, %d TPM checks; want %d", i+1, got, want)
				}
			}
			n1 := cr.unseals.Load()
			for i := range 2 {
				if err := s.Login(ctx, ti.UUID, RoleUser, []byte("wrong")); !errors.Is(err, ErrPINIncorrect) {
					t.Fatal(err)
				}
				if got := cr.unseals.Load() - n1; got != int32(i+1) {
					t.Fatalf("wrong PIN %d: %d TPM checks", i+1, got)
				}
			}
			if got := counter(t, tpm); got != c0+2 {
				t.Fatalf("DA counter %d, want %d", got, c0+2)
			}
		})
	}
}

// TestPINRecoveryCopyFollowsMasterKey: a master key rotation gives the
// domain a new recovery key; each record's copy is rewritten under it at
// its role's next login.
func TestPINRecoveryCopyFollowsMasterKey(t *testing.T) {
	t.Parallel()
	tpm, root, s, path := ownTPM(t, tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}, Options{})
	ti := newToken(t, s, "tok")
	copyGen := func(role Role) uint32 {
		r, err := parsePINRecord(storedPIN(t, path, ti.UUID, role))
		if err != nil || r.version != 3 || len(r.copy) != recoveryCopyLen {
			t.Fatalf("%s record: %+v, %v", role, r, err)
		}
		return binary.BigEndian.Uint32(r.copy)
	}
	if g := copyGen(RoleUser); g != 1 {
		t.Fatalf("copy under master generation %d", g)
	}
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	next, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	nb, _ := p.Sealed.MarshalBinary()
	if err := s.BeginMasterRotation(ctx, &NextMaster{Sealed: nb, Proof: next.DomainID()}); err != nil {
		t.Fatal(err)
	}
	if err := s.AttachNext(ctx, next, next.DomainID()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateMaster(ctx, nil); err != nil {
		t.Fatal(err)
	}
	root.Close()
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	if g := copyGen(RoleUser); g != 2 {
		t.Fatalf("user's copy under master generation %d after the rotation and a login, want 2", g)
	}
	if g := copyGen(RoleSO); g != 1 {
		t.Fatalf("SO's copy (no login) under generation %d, want 1", g)
	}
}

// TestEscrowedDomainWithoutRecoveryKey: a domain escrowed to custodians
// whose master key predates recovery keys keeps version 2 records (a bound
// record could not follow it into another TPM), and says so.
func TestEscrowedDomainWithoutRecoveryKey(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	custodians, _ := tpmtest.Custodians(t)
	p, err := tpm.Provision(tpmroot.ProvisionOptions{Custodians: custodians[:1], Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	v1 := *p.Sealed
	v1.Version, v1.RecoveryPublic, v1.RecoveryMAC = 1, nil, nil
	root, err := tpm.Load(&v1)
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	sealed, _ := v1.MarshalBinary()
	meta, _ := p.Escrow.MarshalBinary()
	s, err := openAt(ctx, newLocation(t), Options{Argon2: cheapArgon})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetRootRecord(ctx, &RootRecord{Sealed: sealed, DomainID: root.DomainID(), Escrow: meta}); err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(ctx, root, root.DomainID()); err != nil {
		t.Fatal(err)
	}
	if b := s.PINBinding(); b.Bound || b.Why == "" {
		t.Fatalf("binding of an escrowed domain without a recovery key: %+v", b)
	}
	ti := newToken(t, s, "tok")
	if err := s.Login(ctx, ti.UUID, RoleUser, userPIN); err != nil {
		t.Fatal(err)
	}
	st, _ := s.Token(ctx, ti.UUID)
	if st.userPIN[0] != 2 {
		t.Fatalf("record of version %d, want 2", st.userPIN[0])
	}
}

// TestParseBoundRecord: a version 3 record's tail is exact.
func TestParseBoundRecord(t *testing.T) {
	t.Parallel()
	r := &pinRecord{version: 3, gen: 1, params: cheapArgon, salt: make([]byte, 16), nonce: make([]byte, 12), sealed: make([]byte, 48),
		seal: []byte("seal"), copy: make([]byte, recoveryCopyLen)}
	good := r.marshal()
	if _, err := parsePINRecord(good); err != nil {
		t.Fatal(err)
	}
	r.copy = nil
	if _, err := parsePINRecord(r.marshal()); err != nil {
		t.Fatalf("without a copy: %v", err)
	}
	for name, b := range map[string][]byte{
		"trailing":    append(append([]byte(nil), good...), 0),
		"truncated":   good[:len(good)-1],
		"short copy":  append(append([]byte(nil), good[:len(good)-recoveryCopyLen-2]...), 0, 1, 0),
		"empty seal":  append(append([]byte(nil), good[:pinRecordLen]...), 0, 0, 0, 0),
		"no tail":     good[:pinRecordLen],
		"v2 and tail": append([]byte{2}, good[1:]...),
	} {
		if _, err := parsePINRecord(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
