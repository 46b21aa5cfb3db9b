package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"hsmemu/keystore"
	"hsmemu/tpmroot"
	"hsmemu/tpmroot/escrow"
)

// StateConfig says where the daemon's state lives and which TPM holds its
// master key.
type StateConfig struct {
	Dir string // state directory; created 0700 if missing
	// DB is the keystore's database as --db gives it (keystore.OpenDB):
	// sqlite:PATH or a PostgreSQL connection string; empty means the
	// SQLite file DatabaseName in Dir.
	DB     string
	TPM    string // "managed", a device path, "swtpm:unix:PATH", or "" for the default
	Logger *slog.Logger
	Store  keystore.Options
	// Escrow says to whom a new master key is split, when this open
	// provisions the domain; zero means to no one.
	Escrow tpmroot.ProvisionOptions
	// ProvisionOnly refuses a state directory that already holds a domain
	// (ErrAlreadyProvisioned) instead of opening it: `hsmemu init`.
	ProvisionOnly bool
	// TPMStateKey is the file of the key a managed swtpm's state is
	// encrypted under (tpmroot.Spec.StateKey); empty for none.
	TPMStateKey string
	// DA are the dictionary-attack parameters a managed swtpm gets the
	// first time it is opened (tpmda.go); zero means tpmroot.ManagedDA.
	DA tpmroot.DAParams
	// Reanchor re-anchors the keystore in the TPM on purpose, whatever
	// its anchor says, for that reason (`hsmemu restore`: a backup is
	// older by design); audited as anchor.reset. Empty: a keystore older
	// than its anchor is refused (keystore.ErrRolledBack).
	Reanchor string
}

// tpmSpec is cfg's TPM, with its state key.
func (cfg StateConfig) tpmSpec() (tpmroot.Spec, error) {
	spec, err := tpmroot.ParseSpec(cfg.TPM, cfg.Dir)
	if err != nil {
		return spec, err
	}
	if cfg.TPMStateKey != "" {
		if spec.Kind != tpmroot.KindManaged {
			return spec, fmt.Errorf("a TPM state key is for a managed swtpm's state, not for %s (a TPM keeps its own state)", spec)
		}
		spec.StateKey = cfg.TPMStateKey
	}
	return spec, nil
}

// ErrAlreadyProvisioned is OpenState's answer, with ProvisionOnly, for a
// state directory that already holds a security domain.
var ErrAlreadyProvisioned = errors.New("the state directory already holds a security domain")

// State is an opened state directory: the TPM, the master key loaded in it,
// and the keystore attached to it.
type State struct {
	Spec  tpmroot.Spec // the TPM asked for, with a managed swtpm's state key
	TPM   *tpmroot.TPM
	Root  *tpmroot.Root
	Store *keystore.Store
	// DBPath is the keystore's file, on SQLite; empty on PostgreSQL.
	DBPath string
	// Provisioned is true when this open created the domain.
	Provisioned bool
	// Shares are the custodians' encrypted shares of a domain this open
	// created with escrow, for the caller to hand out; nil otherwise.
	Shares []escrow.EncryptedShare
	// Tampered are the tokens whose rows failed their integrity check at
	// open: listed in their slots, unusable, each recorded in the audit log.
	Tampered []keystore.TokenInfo
	// Counter is the TPM counter the keystore is anchored in, and Anchor
	// what opening found (anchor.go).
	Counter *tpmroot.Counter
	Anchor  keystore.AnchorReport

	// Node is this machine's node of the domain (nodes.go).
	Node int64

	next *tpmroot.Root // the master key a rotation under way moves to
	// nextOwn is next's sealed form for this node's row, when it was
	// imported from this node's copy (rotation.go, importNext).
	nextOwn   []byte
	log       *slog.Logger
	nodeFresh []byte // a sealed master key to write into this node's row once attached (nodes.go)
	// nodeCatchUp is a master key imported at the start, to check and
	// keep once attached (nodes.go, catchUp).
	nodeCatchUp *nodeCatchUp
	// rotateMu keeps one master key rotation step at a time
	// (rotation.go); followMu orders following other nodes' rotations
	// (follow.go).
	rotateMu, followMu sync.Mutex
}

// DatabaseName is the keystore's file name inside the state directory.
const DatabaseName = "keystore.db"

// OpenState opens the state directory, provisioning a new security domain in
// the TPM when the keystore has none. A keystore provisioned on another TPM
// is refused with tpmroot.ErrWrongTPM and left untouched.
func OpenState(ctx context.Context, cfg StateConfig) (_ *State, err error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dir == "" {
		return nil, errors.New("no state directory given")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	spec, err := cfg.tpmSpec()
	if err != nil {
		return nil, err
	}
	st := &State{Spec: spec, log: log}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	if st.TPM, err = tpmroot.OpenWith(ctx, spec, tpmroot.Options{Logger: log}); err != nil {
		return nil, err
	}
	info := st.TPM.Info()
	log.Info("TPM opened", "kind", info.Kind, "manufacturer", info.Manufacturer)
	if err := configureManagedDA(st.TPM, spec, cfg.DA, log); err != nil {
		return nil, err
	}
	db := cfg.DB
	if db == "" {
		db = "sqlite:" + filepath.Join(cfg.Dir, DatabaseName)
	}
	if kind, target, err := keystore.ParseDB(db); err != nil {
		return nil, err
	} else if kind == keystore.EngineSQLite {
		st.DBPath = target
	}
	if st.Store, err = keystore.OpenDB(ctx, db, cfg.Store); err != nil {
		return nil, err
	}
	rec, err := st.Store.RootRecord(ctx)
	switch {
	case errors.Is(err, keystore.ErrNotProvisioned):
		// A keystore with tokens but no root has lost its root record:
		// a new domain would orphan every key in it.
		if has, err := st.Store.HasTokens(ctx); err != nil || has {
			if err == nil {
				err = errors.New("the keystore holds tokens but no master key record; refusing to provision a new domain over them (restore the database from a backup)")
			}
			return nil, err
		}
		p, err := st.TPM.Provision(cfg.Escrow)
		if err != nil {
			return nil, fmt.Errorf("provision master key: %w", err)
		}
		sealed, err := p.Sealed.MarshalBinary()
		if err != nil {
			return nil, err
		}
		rec := &keystore.RootRecord{Sealed: sealed, DomainID: p.Sealed.DomainID}
		if p.Escrowed() {
			if rec.Escrow, err = p.Escrow.MarshalBinary(); err != nil {
				return nil, err
			}
			st.Shares = p.Shares
		}
		if err := st.Store.SetRootRecord(ctx, rec); err != nil {
			return nil, err
		}
		st.Provisioned = true
		log.Info("provisioned a new security domain", "domain", fmt.Sprintf("%x", p.Sealed.DomainID[:8]))
		if p.Escrowed() {
			log.Info("master key escrowed", "custodians", len(p.Shares), "threshold", cfg.Escrow.Threshold)
		} else {
			log.Warn("the master key is not escrowed to any custodian: if this TPM is lost, every key in this keystore is lost with it")
		}
		if st.Root, err = st.TPM.Load(p.Sealed); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case cfg.ProvisionOnly:
		return nil, ErrAlreadyProvisioned
	default:
		if st.Root, err = st.loadNodeMaster(ctx, rec); err != nil {
			return nil, err
		}
	}
	if err := st.Store.Attach(ctx, st.Root, st.Root.DomainID()); err != nil {
		return nil, err
	}
	if err := st.attachNode(ctx); err != nil {
		return nil, err
	}
	if st.DBPath == "" && st.Node != 0 {
		// Other nodes may rotate the master key under this one
		// (follow.go).
		st.Store.SetMasterFollower(st.follower)
	}
	if err := st.openAnchor(ctx, cfg); err != nil {
		return nil, err
	}
	started, err := st.Store.RotationStarted(ctx)
	if err != nil {
		return nil, err
	}
	switch {
	case started:
		// A master key rotation was interrupted while moving the
		// keystore: finish it before serving, so that the old master key
		// is needed no longer.
		log.Warn("finishing an interrupted master key rotation")
		if _, err := st.FinishMasterRotation(ctx, nil); err != nil {
			// Both master keys stay loaded: every token opens under the
			// one it is at, and the daemon serves.
			log.Error("the interrupted master key rotation did not finish; `hsmemu rotate master --resume` tries again", "err", err)
		} else {
			log.Info("master key rotation finished")
		}
	case rec != nil && rec.Next != nil:
		log.Warn("a master key rotation was begun and not finished: `hsmemu rotate master --resume` finishes it, `--abort` forgets it")
	}
	if n, err := st.Store.UpgradeMACs(ctx); err != nil {
		return nil, fmt.Errorf("rewrite token MACs in the current form: %w", err)
	} else if n > 0 {
		log.Info("token rows rewritten under the current MAC form", "tokens", n)
	}
	if st.Tampered, err = tamperedTokens(ctx, st.Store); err != nil {
		return nil, err
	}
	for _, ti := range st.Tampered {
		log.Error("a token row failed its integrity check: the token is listed but unusable", "slot", ti.ID, "err", ti.Tampered)
	}
	if err := st.Store.AuditTamper(ctx); err != nil {
		return nil, err
	}
	return st, nil
}

// tamperedTokens lists the tokens whose rows fail their integrity check.
func tamperedTokens(ctx context.Context, store *keystore.Store) ([]keystore.TokenInfo, error) {
	list, err := store.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	var out []keystore.TokenInfo
	for _, ti := range list {
		if ti.Tampered != nil {
			out = append(out, ti)
		}
	}
	return out, nil
}

// Close closes the keystore, flushes the master key from the TPM and stops a
// managed swtpm.
func (s *State) Close() error {
	var errs []error
	if err := s.closeAnchor(); err != nil && !errors.Is(err, keystore.ErrRolledBack) {
		errs = append(errs, err)
	}
	if s.Store != nil {
		errs = append(errs, s.Store.Close())
	}
	if s.Root != nil {
		errs = append(errs, s.Root.Close())
	}
	if s.next != nil {
		errs = append(errs, s.next.Close())
	}
	if s.TPM != nil {
		errs = append(errs, s.TPM.Close())
	}
	return errors.Join(errs...)
}

// RecoverResult is what RecoverState did.
type RecoverResult struct {
	Domain []byte // the security domain's id
	Node   int64  // the new TPM's node
	TPM    []byte // its identity (SRK name)
	// Replaced are the nodes a recovery in PostgreSQL removed
	// (RecoverPostgres); nil from a keystore file.
	Replaced []int64
	// ReboundPINs counts the PIN records brought into the new TPM from
	// their recovery copies: their PINs log in there as before (on
	// PostgreSQL, through bindings of this node's, as a join makes).
	ReboundPINs int
	// UnboundPINs are the records that could not be: their role cannot
	// log in on the new TPM until its PIN is set anew (the SO sets the
	// user's; an SO record needs the shares of the master key its copy is
	// under, given beside the current one's).
	UnboundPINs []keystore.UnboundPIN
	// UnusedShares names the master keys (by proof) whose shares were
	// given beside the current one's and opened no PIN record.
	UnusedShares [][]byte
}

// RecoverState makes cfg.Dir, which must hold no keystore, the home of the
// security domain of the keystore at from, an SQLite file (RecoverPostgres
// takes a keystore in PostgreSQL over in place): it copies that keystore in,
// recreates its master key in cfg.Dir's TPM from custodians' decrypted
// shares, and brings every PIN record bound to the old TPM into the new
// one (keystore.RebindPINs) with the recovery keys the shares give. The
// shares must include the threshold of the keystore's current master
// key's; shares of earlier master keys (before a rotation) may be given
// beside them, for PIN records whose role has not logged in since that
// rotation. After it, OpenState on cfg.Dir opens every object the old
// keystore held, and the same PINs log in.
func RecoverState(ctx context.Context, cfg StateConfig, from string, shares []*escrow.Share) (res *RecoverResult, err error) {
	if cfg.Dir == "" {
		return nil, errors.New("no state directory given")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	dst := filepath.Join(cfg.Dir, DatabaseName)
	if _, err := os.Stat(dst); err == nil {
		return nil, ErrAlreadyProvisioned
	}
	if err := keystore.CopyFile(ctx, from, dst); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			for _, suffix := range []string{"", "-wal", "-shm"} {
				os.Remove(dst + suffix)
			}
		}
	}()
	store, err := keystore.Open(ctx, dst, cfg.Store)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	// The copy goes to another TPM: its anchor record is made anew there,
	// once it is attached (below).
	if err := store.DropAnchor(ctx); err != nil {
		return nil, err
	}
	rec, err := store.RootRecord(ctx)
	if err != nil {
		return nil, fmt.Errorf("the keystore to recover: %w", err)
	}
	if rec.Next != nil {
		started, err := store.RotationStarted(ctx)
		if err != nil {
			return nil, err
		}
		if started {
			return nil, errors.New("the keystore was copied while a master key rotation was moving it: recover from a copy taken before or after the rotation")
		}
		// Begun and never moving anything: the current master key's
		// shares recover it, and the rotation is forgotten.
		if err := store.AbortMasterRotation(ctx); err != nil {
			return nil, err
		}
		if rec, err = store.RootRecord(ctx); err != nil {
			return nil, err
		}
	}
	// A share splits one master key: the current one's proof must match
	// (the domain id names the first master key of the domain). Shares of
	// earlier master keys only open PIN records' recovery copies.
	current, olderIDs, older, err := sortShares(rec, shares)
	if err != nil {
		return nil, err
	}
	spec, err := cfg.tpmSpec()
	if err != nil {
		return nil, err
	}
	tpm, err := tpmroot.Open(ctx, spec)
	if err != nil {
		return nil, err
	}
	defer tpm.Close()
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := configureManagedDA(tpm, spec, cfg.DA, log); err != nil {
		return nil, err
	}
	keys, err := recoveryKeys(current, olderIDs, older)
	if err != nil {
		return nil, err
	}
	sealed, err := tpm.Recover(current)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(sealed.DomainID, rec.Proof) {
		return nil, errors.New("the shares recreate another master key than the keystore's")
	}
	b, err := sealed.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if err := store.SetRootRecord(ctx, &keystore.RootRecord{Sealed: b, DomainID: rec.DomainID, Proof: rec.Proof, Escrow: rec.Escrow}); err != nil {
		return nil, err
	}
	root, err := tpm.Load(sealed)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	if err := store.Attach(ctx, root, root.DomainID()); err != nil {
		return nil, err
	}
	// The copy's nodes were the old TPMs: the new one is its only node.
	if err := store.DropNodes(ctx); err != nil {
		return nil, err
	}
	ik, err := tpm.CreateImportKey()
	if err != nil {
		return nil, err
	}
	ikb, err := ik.MarshalBinary()
	if err != nil {
		return nil, err
	}
	node, _, err := store.AdoptNode(ctx, tpm.SRKName(), ikb)
	if err != nil {
		return nil, err
	}
	if err := store.AttachNode(ctx, node); err != nil {
		return nil, err
	}
	res = &RecoverResult{Domain: rec.DomainID, Node: node, TPM: tpm.SRKName()}
	var used []int
	if res.ReboundPINs, res.UnboundPINs, used, err = store.RebindPINs(ctx, keys); err != nil {
		return nil, fmt.Errorf("bring the PIN records into the new TPM: %w", err)
	}
	for i := 1; i < len(keys); i++ {
		if used[i] == 0 {
			res.UnusedShares = append(res.UnusedShares, olderIDs[i-1])
		}
	}
	// The copy's anchor record was dropped: it is anchored anew, in a
	// counter of the new TPM.
	if _, _, err := anchor(ctx, tpm, store, root.DomainID(), "domain recover", log); err != nil {
		return nil, fmt.Errorf("anchor the recovered keystore in the new TPM: %w", err)
	}
	return res, nil
}
