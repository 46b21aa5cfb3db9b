package bench

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3" // the floor's "sqlite3" driver (the keystore's too)

	"hsmemu/cryptoki/ck"
	"hsmemu/daemon"
	"hsmemu/keystore"
)

// HotpathOptions says what `hsmemu bench hotpath` measures.
type HotpathOptions struct {
	// StateDir is where a scratch state directory is made (a new temporary
	// directory inside it, removed afterwards); "" means os.TempDir().
	StateDir string
	// TPM is the TPM spec as `hsmemu serve --tpm` takes it; "" means
	// "managed", a swtpm started under the scratch directory and stopped
	// at the end.
	TPM string
	// Count is the number of repetitions of each benchmark; the median is
	// reported, with the min and max. Zero means 5.
	Count int
	// Progress, when not nil, gets one line per benchmark run as it
	// finishes.
	Progress io.Writer
	// Quick replaces testing.Benchmark's adaptive runs (about a second
	// each) with a fixed, small number of iterations of each benchmark,
	// timed by hand (allocations are still counted). It is for tests and
	// smoke checks: the whole run takes well under a second besides the
	// setup, and its figures are noisy.
	Quick bool
}

// HotpathResult is one benchmark over all repetitions.
type HotpathResult struct {
	Name        string  `json:"name"`      // open-warm, open-cold, seal, floor-gcm, floor-sqlite, socket-roundtrip
	What        string  `json:"what"`      // one line: what it measures
	NsPerOp     float64 `json:"ns_per_op"` // median over the repetitions
	NsMin       float64 `json:"ns_min"`
	NsMax       float64 `json:"ns_max"`
	AllocsPerOp int64   `json:"allocs_per_op"`    // median over the repetitions
	Versus      string  `json:"versus,omitempty"` // the floor it is compared with, e.g. "floor-gcm" or "floor-gcm+floor-sqlite"
	Ratio       float64 `json:"ratio,omitempty"`  // NsPerOp / the floor's NsPerOp (the sum of the floors' for several)
}

// The benchmarks' names, in the order they run and are reported.
const (
	HotpathOpenWarm        = "open-warm"
	HotpathOpenCold        = "open-cold"
	HotpathSeal            = "seal"
	HotpathFloorGCM        = "floor-gcm"
	HotpathFloorSQLite     = "floor-sqlite"
	HotpathSocketRoundTrip = "socket-roundtrip"
)

// hpVersus says which floors each benchmark is compared with.
var hpVersus = map[string][]string{
	HotpathOpenWarm: {HotpathFloorGCM},
	HotpathOpenCold: {HotpathFloorGCM, HotpathFloorSQLite},
}

// hpArgon2 are the PIN costs of the scratch tokens: no PIN is checked on the
// hot path, so the production cost would only slow the setup down.
var hpArgon2 = keystore.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

// hpPIN is the scratch tokens' SO and user PIN.
var hpPIN = []byte("hsmemu-bench-hotpath")

// hpBench is one benchmark: run does n operations.
type hpBench struct {
	name, what string
	quickN     int // iterations in Quick mode
	run        func(n int) error
}

// Hotpath measures the keystore's hot path against its floors, as the
// keystore's in-package benchmarks do, on a scratch state directory opened
// the way the daemon opens its own (daemon.OpenState: the TPM, the master
// key, the keystore):
//
//   - open-warm: Store.Open of an AES-256 key in the object cache, against
//     floor-gcm
//   - open-cold: Store.Open with the cache disabled, against floor-gcm +
//     floor-sqlite
//   - seal: Store.Put of a new AES-256 key (seal and a committed insert)
//   - floor-gcm: a bare AES-256-GCM open of 32 bytes with 80 bytes of AAD
//   - floor-sqlite: a bare indexed point read of a 250-byte row with the
//     keystore's connection settings
//   - socket-roundtrip: a bare 28-byte request and 53-byte reply over a
//     Unix socket to another process, both ends blocking: the floor of
//     every call of the PKCS#11 module
//
// Each repetition runs all six in turn, so that the ratios hold on a
// noisy machine; each run is a testing.Benchmark (about a second) unless
// opts.Quick. The server of socket-roundtrip is this binary, re-executed:
// main must call MaybeServeEcho first thing.
//
// The swtpm, the echo server and the scratch directory are gone when
// Hotpath returns, whatever it returns. ctx is checked between runs; a run
// itself is not interrupted.
func Hotpath(ctx context.Context, opts HotpathOptions) (_ []HotpathResult, err error) {
	if opts.Count <= 0 {
		opts.Count = 5
	}
	if opts.TPM == "" {
		opts.TPM = "managed"
	}
	parent := opts.StateDir
	if parent == "" {
		parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "hsmemu-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench hotpath: scratch directory: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("bench hotpath: removing the scratch directory: %w", rerr))
		}
	}()
	env := &hpEnv{}
	defer func() {
		if cerr := env.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("bench hotpath: cleaning up: %w", cerr))
		}
	}()
	benches, err := env.setup(ctx, dir, opts.TPM)
	if err != nil {
		return nil, fmt.Errorf("bench hotpath: setting up: %w", err)
	}

	ns := make([][]float64, len(benches))
	allocs := make([][]float64, len(benches))
	for rep := 1; rep <= opts.Count; rep++ {
		for i, bm := range benches {
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("bench hotpath: %w", err)
			}
			n, a, err := hpMeasure(bm, opts.Quick)
			if err != nil {
				return nil, fmt.Errorf("bench hotpath: %s: %w", bm.name, err)
			}
			ns[i] = append(ns[i], n)
			allocs[i] = append(allocs[i], float64(a))
			if opts.Progress != nil {
				fmt.Fprintf(opts.Progress, "%d/%d %-16s %12s ns/op %6d allocs/op\n", rep, opts.Count, bm.name, hpFmtNs(n), a)
			}
		}
	}

	rs := make([]HotpathResult, len(benches))
	byName := map[string]*HotpathResult{}
	for i, bm := range benches {
		rs[i] = HotpathResult{
			Name:        bm.name,
			What:        bm.what,
			NsPerOp:     median(ns[i]),
			NsMin:       slices.Min(ns[i]),
			NsMax:       slices.Max(ns[i]),
			AllocsPerOp: int64(math.Round(median(allocs[i]))),
		}
		byName[bm.name] = &rs[i]
	}
	for i := range rs {
		floors := hpVersus[rs[i].Name]
		if len(floors) == 0 {
			continue
		}
		var sum float64
		for _, f := range floors {
			sum += byName[f].NsPerOp
		}
		rs[i].Versus = strings.Join(floors, "+")
		if sum > 0 {
			rs[i].Ratio = rs[i].NsPerOp / sum
		}
	}
	return rs, nil
}

// hpMeasure runs one benchmark once and returns its time and allocations
// per operation.
func hpMeasure(bm *hpBench, quick bool) (nsPerOp float64, allocsPerOp int64, err error) {
	if quick {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		err := bm.run(bm.quickN)
		d := time.Since(start)
		runtime.ReadMemStats(&after)
		if err != nil {
			return 0, 0, err
		}
		return float64(d.Nanoseconds()) / float64(bm.quickN), int64(after.Mallocs-before.Mallocs) / int64(bm.quickN), nil
	}
	var runErr error
	r := testing.Benchmark(func(b *testing.B) {
		b.ReportAllocs()
		if err := bm.run(b.N); err != nil {
			runErr = err
			b.FailNow()
		}
	})
	if runErr != nil {
		return 0, 0, runErr
	}
	if r.N == 0 {
		return 0, 0, errors.New("the benchmark did not run")
	}
	return float64(r.T.Nanoseconds()) / float64(r.N), r.AllocsPerOp(), nil
}

// hpEnv is what the benchmarks run on; close releases all of it.
type hpEnv struct {
	st        *daemon.State   // the scratch state: TPM, master key, keystore (cache on)
	cold      *keystore.Store // the same keystore, cache off
	seal      *keystore.Store // a keystore of its own for seal's inserts
	floorDB   *sql.DB
	floorStmt *sql.Stmt
	echo      *echoClient
}

// setup opens everything the benchmarks need in dir and returns them in
// their order.
func (e *hpEnv) setup(ctx context.Context, dir, tpm string) ([]*hpBench, error) {
	// A Unix socket path holds 107 bytes: the echo server's is the
	// longest here (a managed swtpm checks its own).
	sock := filepath.Join(dir, "echo.sock")
	if len(sock) > 107 {
		return nil, fmt.Errorf("scratch directory %s: path too long for a Unix socket; use a shorter --state-dir", dir)
	}
	var err error
	e.st, err = daemon.OpenState(ctx, daemon.StateConfig{Dir: dir, TPM: tpm, Store: keystore.Options{Argon2: hpArgon2}})
	if err != nil {
		return nil, err
	}
	tok, err := hpToken(ctx, e.st.Store, "bench")
	if err != nil {
		return nil, err
	}
	attrs, err := hpKeyAttrs()
	if err != nil {
		return nil, err
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	obj, err := e.st.Store.Put(ctx, tok, attrs, secret)
	if err != nil {
		return nil, err
	}
	if _, err := e.st.Store.Open(ctx, obj.ID); err != nil {
		return nil, err
	}

	// A second Store on the same file, attached to the same master key,
	// with its cache off: every Open reads and unseals.
	e.cold, err = keystore.Open(ctx, filepath.Join(dir, daemon.DatabaseName), keystore.Options{Argon2: hpArgon2, CacheEntries: -1})
	if err != nil {
		return nil, err
	}
	if err := e.cold.Attach(ctx, e.st.Root, e.st.Root.DomainID()); err != nil {
		return nil, err
	}
	if err := e.cold.Login(ctx, tok, keystore.RoleUser, hpPIN); err != nil {
		return nil, err
	}
	if got, err := e.cold.Open(ctx, obj.ID); err != nil || !bytes.Equal(got.Secret, secret) {
		return nil, fmt.Errorf("cold open of the stored key: %v", err)
	}

	// Seal's inserts go to a keystore of their own, under the same master
	// key, so that the rows they add over the repetitions do not deepen
	// the table open-cold reads.
	rec, err := e.st.Store.RootRecord(ctx)
	if err != nil {
		return nil, err
	}
	e.seal, err = keystore.Open(ctx, filepath.Join(dir, "seal.db"), keystore.Options{Argon2: hpArgon2})
	if err != nil {
		return nil, err
	}
	if err := e.seal.SetRootRecord(ctx, &keystore.RootRecord{Sealed: rec.Sealed, DomainID: rec.DomainID}); err != nil {
		return nil, err
	}
	if err := e.seal.Attach(ctx, e.st.Root, e.st.Root.DomainID()); err != nil {
		return nil, err
	}
	sealTok, err := hpToken(ctx, e.seal, "bench-seal")
	if err != nil {
		return nil, err
	}

	aead, ct, nonce, aad, err := hpFloorGCM()
	if err != nil {
		return nil, err
	}
	if err := e.setupFloorSQLite(ctx, filepath.Join(dir, "floor.db")); err != nil {
		return nil, err
	}
	if e.echo, err = startEcho(sock); err != nil {
		return nil, err
	}

	// The operations run without a deadline or cancellation, as in the
	// keystore's benchmarks: database/sql watches a cancellable context
	// with a goroutine per query.
	bg := context.WithoutCancel(ctx)
	warm, cold, sealer, id := e.st.Store, e.cold, e.seal, obj.ID
	var v []byte
	req, rep := make([]byte, echoRequest), make([]byte, echoReply)
	return []*hpBench{
		{HotpathOpenWarm, "Store.Open of a stored AES-256 key found in the object cache", 2000, func(n int) error {
			for range n {
				if _, err := warm.Open(bg, id); err != nil {
					return err
				}
			}
			return nil
		}},
		{HotpathOpenCold, "Store.Open with the cache off: one SQLite point read, the attribute checks, one AES-GCM open", 300, func(n int) error {
			for range n {
				if _, err := cold.Open(bg, id); err != nil {
					return err
				}
			}
			return nil
		}},
		{HotpathSeal, "Store.Put of a new AES-256 key: seal plus a committed, fsynced insert", 20, func(n int) error {
			for range n {
				if _, err := sealer.Put(bg, sealTok, attrs, secret); err != nil {
					return err
				}
			}
			return nil
		}},
		{HotpathFloorGCM, "bare AES-256-GCM open of 32 bytes with 80 bytes of AAD", 2000, func(n int) error {
			for range n {
				if _, err := aead.Open(nil, nonce, ct, aad); err != nil {
					return err
				}
			}
			return nil
		}},
		{HotpathFloorSQLite, "bare indexed point read of a 250-byte row, with the keystore's connection settings", 300, func(n int) error {
			for range n {
				if err := e.floorStmt.QueryRow(500).Scan(&v); err != nil {
					return err
				}
			}
			return nil
		}},
		{HotpathSocketRoundTrip, "28-byte request, 53-byte reply over a Unix socket to another process, blocking fds: the floor of every module call", 300, func(n int) error {
			return e.echo.roundTrips(n, req, rep)
		}},
	}, nil
}

// hpToken creates a token with both PINs set and logs its user in.
func hpToken(ctx context.Context, s *keystore.Store, label string) (keystore.UUID, error) {
	ti, err := s.CreateToken(ctx, keystore.TokenSpec{Label: label, Tier: keystore.TierStandard, SOPIN: hpPIN, UserPIN: hpPIN})
	if err != nil {
		return keystore.UUID{}, err
	}
	return ti.UUID, s.Login(ctx, ti.UUID, keystore.RoleUser, hpPIN)
}

// hpKeyAttrs are those of the keystore benchmarks' key: a private AES key.
func hpKeyAttrs() (keystore.Attributes, error) {
	return keystore.NewAttributes(
		keystore.Attribute{Type: ck.CKA_CLASS, Value: keystore.Ulong(ck.CKO_SECRET_KEY)},
		keystore.Attribute{Type: ck.CKA_KEY_TYPE, Value: keystore.Ulong(ck.CKK_AES)},
		keystore.Attribute{Type: ck.CKA_TOKEN, Value: keystore.Bool(true)},
		keystore.Attribute{Type: ck.CKA_PRIVATE, Value: keystore.Bool(true)},
		keystore.Attribute{Type: ck.CKA_LABEL, Value: []byte("aes")},
		keystore.Attribute{Type: ck.CKA_ID, Value: []byte{1, 2, 3}},
		keystore.Attribute{Type: ck.CKA_EXTRACTABLE, Value: keystore.Bool(true)},
		keystore.Attribute{Type: ck.CKA_SENSITIVE, Value: keystore.Bool(true)},
	)
}

// hpFloorGCM prepares the GCM floor: a sealed 32-byte secret with 80 bytes
// of AAD under an AES-256 key, as the keystore seals.
func hpFloorGCM() (aead cipher.AEAD, ct, nonce, aad []byte, err error) {
	block, err := aes.NewCipher(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if aead, err = cipher.NewGCMWithTagSize(block, 16); err != nil {
		return nil, nil, nil, nil, err
	}
	nonce = make([]byte, 12)
	aad = make([]byte, 80)
	ct = aead.Seal(nil, nonce, make([]byte, 32), aad)
	return aead, ct, nonce, aad, nil
}

// setupFloorSQLite makes the SQLite floor's table: 1000 rows of 250 bytes,
// the size of a stored AES-256 key's attributes and seal.
func (e *hpEnv) setupFloorSQLite(ctx context.Context, path string) error {
	dsn := "file:" + path + "?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=10000"
	var err error
	if e.floorDB, err = sql.Open("sqlite3", dsn); err != nil {
		return err
	}
	if _, err := e.floorDB.ExecContext(ctx, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)"); err != nil {
		return err
	}
	tx, err := e.floorDB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	row := make([]byte, 250)
	for i := 1; i <= 1000; i++ {
		if _, err := tx.ExecContext(ctx, "INSERT INTO t (id, v) VALUES (?, ?)", i, row); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	e.floorStmt, err = e.floorDB.PrepareContext(ctx, "SELECT v FROM t WHERE id = ?")
	return err
}

// close releases what setup opened, the echo server first and the TPM (and
// with it a managed swtpm) last.
func (e *hpEnv) close() error {
	var errs []error
	if e.echo != nil {
		errs = append(errs, e.echo.Close())
	}
	if e.floorStmt != nil {
		errs = append(errs, e.floorStmt.Close())
	}
	if e.floorDB != nil {
		errs = append(errs, e.floorDB.Close())
	}
	if e.seal != nil {
		errs = append(errs, e.seal.Close())
	}
	if e.cold != nil {
		errs = append(errs, e.cold.Close())
	}
	if e.st != nil {
		errs = append(errs, e.st.Close())
	}
	return errors.Join(errs...)
}

// hpFmtNs formats a time in nanoseconds: one decimal below 10 µs.
func hpFmtNs(ns float64) string {
	if ns < 10000 {
		return fmt.Sprintf("%.1f", ns)
	}
	return fmt.Sprintf("%.0f", ns)
}

// WriteHotpathTable writes Hotpath's results as a table for people: one row
// per benchmark, then what each one measures.
func WriteHotpathTable(w io.Writer, rs []HotpathResult) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %12s %12s %12s %9s %7s  %s\n", "benchmark", "ns/op", "min", "max", "allocs/op", "ratio", "versus")
	for _, r := range rs {
		ratio := ""
		if r.Versus != "" {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		row := fmt.Sprintf("%-16s %12s %12s %12s %9d %7s  %s", r.Name, hpFmtNs(r.NsPerOp), hpFmtNs(r.NsMin), hpFmtNs(r.NsMax), r.AllocsPerOp, ratio, r.Versus)
		b.WriteString(strings.TrimRight(row, " "))
		b.WriteString("\n")
	}
	if len(rs) > 0 {
		b.WriteString("\n")
	}
	for _, r := range rs {
		fmt.Fprintf(&b, "%-16s %s\n", r.Name, r.What)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteHotpathJSON writes Hotpath's results as an indented JSON array.
func WriteHotpathJSON(w io.Writer, rs []HotpathResult) error {
	if rs == nil {
		rs = []HotpathResult{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}
