package cli

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"database/sql"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"hsmemu/bench"
	"hsmemu/daemon"
	"hsmemu/internal/pgtest"
	"hsmemu/keystore"
	"hsmemu/tpmroot/tpmtest"
)

// TestMain lets the scripts run hsmemu as a command of this test binary.
func TestMain(m *testing.M) {
	bench.MaybeServeEcho() // as cmd/hsmemu does, for bench hotpath's round trip
	if os.Getenv(mainEnv) == "1" {
		os.Exit(Main(os.Args))
	}
	testscript.Main(m, map[string]func(){
		"hsmemu": func() { os.Exit(Main(os.Args)) },
	})
}

// TestScripts runs testdata/script/*.txtar against the real command, a
// real managed swtpm included.
func TestScripts(t *testing.T) {
	tpmtest.Require(t)
	t.Cleanup(func() { checkSchemasUsed(t) })
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"genkey":     cmdGenkey,
			"openshare":  cmdOpenshare,
			"putkey":     cmdPutkey,
			"getkey":     cmdGetkey,
			"waitsock":   cmdWaitsock,
			"exits":      cmdExits,
			"sqlexec":    cmdSQLExec,
			"signloop":   cmdSignloop,
			"p11hold":    cmdP11hold,
			"scrape":     cmdScrape,
			"jsonschema": cmdJSONSchema,
			"mode":       cmdMode,
		},
	})
}

// mode FILE PERM checks a file's permission bits (octal).
func cmdMode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: mode FILE PERM")
	}
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	fi, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	if got := fi.Mode().Perm(); got != os.FileMode(want) {
		ts.Fatalf("%s has mode %#o, want %#o", args[0], got, want)
	}
}

// TestPostgresScripts runs testdata/postgres/*.txtar, each with $PGDB a
// fresh database on a PostgreSQL server the test starts.
func TestPostgresScripts(t *testing.T) {
	tpmtest.Require(t)
	srv := pgtest.StartT(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/postgres",
		Setup: func(env *testscript.Env) error {
			dsn, err := srv.NewDatabase(context.Background())
			if err != nil {
				return err
			}
			env.Setenv("PGDB", dsn)
			// Two more, for what needs another database (another domain,
			// a restore into an empty one).
			for _, name := range []string{"PGDB2", "PGDB3"} {
				dsn, err := srv.NewDatabase(context.Background())
				if err != nil {
					return err
				}
				env.Setenv(name, dsn)
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"waitsock":   cmdWaitsock,
			"exits":      cmdExits,
			"dumpedit":   cmdDumpEdit,
			"flipbyte":   cmdFlipByte,
			"genkey":     cmdGenkey,
			"jsonschema": cmdJSONSchema,
			"p11hold":    cmdP11hold,
			"pgexec":     func(ts *testscript.TestScript, neg bool, args []string) { cmdPGExec(ts, srv, neg, args) },
			"mode":       cmdMode,
		},
	})
}

// dumpedit IN TABLE COLUMN INTEGER OUT writes a copy of the keystore
// backup IN with COLUMN of every row of TABLE set to INTEGER, and a
// checksum that matches, as someone editing the file would.
func cmdDumpEdit(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 5 {
		ts.Fatalf("usage: dumpedit IN TABLE COLUMN INTEGER OUT")
	}
	d, err := keystore.ReadDumpFile(ts.MkAbs(args[0]))
	ts.Check(err)
	v, err := strconv.ParseInt(args[3], 10, 64)
	ts.Check(err)
	t := d.Table(args[1])
	if t == nil {
		ts.Fatalf("no table %s in %s", args[1], args[0])
	}
	col := slices.Index(t.Columns, args[2])
	if col < 0 || len(t.Rows) == 0 {
		ts.Fatalf("no column %s or no rows in %s", args[2], args[1])
	}
	for _, row := range t.Rows {
		row[col] = v
	}
	f, err := os.Create(ts.MkAbs(args[4]))
	ts.Check(err)
	_, err = d.WriteTo(f)
	ts.Check(err)
	ts.Check(f.Close())
}

// flipbyte IN OUT writes a copy of IN with its middle byte's bits
// flipped, as a damaged disk or transfer would.
func cmdFlipByte(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: flipbyte IN OUT")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	b[len(b)/2] ^= 0xff
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), b, 0o600))
}

// pgexec STATEMENT runs SQL on the script's database ($PGDB) behind the
// daemons' backs, as someone editing it would.
func cmdPGExec(ts *testscript.TestScript, srv *pgtest.Server, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: pgexec STATEMENT")
	}
	ts.Check(srv.Psql(pgtest.DBName(ts.Getenv("PGDB")), args[0]))
}

// genkey NAME writes a custodian's X25519 key pair: NAME.key (PKCS#8) and
// NAME.pem (the public key, as `openssl pkey -pubout` writes it).
func cmdGenkey(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: genkey NAME")
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	ts.Check(err)
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	ts.Check(err)
	pub, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}), 0o600))
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644))
}

// openshare SHARE KEY opens a share with a custodian's private key, as
// domain recover does, and prints what it holds, never its value.
func cmdOpenshare(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: openshare SHARE KEY")
	}
	sh, err := openShare(ts.MkAbs(args[0]), ts.MkAbs(args[1]))
	if neg {
		if err == nil {
			ts.Fatalf("%s opened with %s", args[0], args[1])
		}
		return
	}
	ts.Check(err)
	defer sh.Wipe()
	fmt.Fprintf(ts.Stdout(), "index %d threshold %d domain %x\n", sh.Index, sh.Threshold, sh.DomainID)
}

// The token and key the recovery script stores and reads back.
var (
	scriptUserPIN = []byte("user-pin-1234")
	scriptSecret  = []byte("0123456789abcdef0123456789abcdef")
)

// stateConfig is STATE-DIR [TPM-STATE-KEY] as a managed state.
func stateConfig(ts *testscript.TestScript, args []string) daemon.StateConfig {
	cfg := daemon.StateConfig{Dir: ts.MkAbs(args[0]), TPM: "managed"}
	if len(args) > 1 {
		cfg.TPMStateKey = ts.MkAbs(args[1])
	}
	return cfg
}

// putkey STATE-DIR [TPM-STATE-KEY] stores an AES key in a new token of the
// keystore there, through the daemon's own state opening (its managed
// swtpm included).
func cmdPutkey(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: putkey STATE-DIR [TPM-STATE-KEY]")
	}
	ctx := context.Background()
	st, err := daemon.OpenState(ctx, stateConfig(ts, args))
	ts.Check(err)
	defer st.Close()
	ti, err := st.Store.CreateToken(ctx, keystore.TokenSpec{Label: "recovered", Tier: keystore.TierStandard,
		SOPIN: []byte("so-pin-12345678"), UserPIN: scriptUserPIN})
	ts.Check(err)
	ts.Check(st.Store.Login(ctx, ti.UUID, keystore.RoleUser, scriptUserPIN))
	attrs, err := keystore.NewAttributes(
		keystore.Attribute{Type: keystore.AttrClass, Value: keystore.Ulong(4)},
		keystore.Attribute{Type: keystore.AttrKeyType, Value: keystore.Ulong(0x1f)},
		keystore.Attribute{Type: keystore.AttrToken, Value: keystore.Bool(true)},
		keystore.Attribute{Type: keystore.AttrPrivate, Value: keystore.Bool(true)},
		keystore.Attribute{Type: keystore.AttrLabel, Value: []byte("k")},
	)
	ts.Check(err)
	_, err = st.Store.Put(ctx, ti.UUID, attrs, scriptSecret)
	ts.Check(err)
}

// getkey STATE-DIR [TPM-STATE-KEY] opens that key again and checks its
// value; with !, checks that the state directory does not open, and
// prints why.
func cmdGetkey(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: getkey STATE-DIR [TPM-STATE-KEY]")
	}
	ctx := context.Background()
	st, err := daemon.OpenState(ctx, stateConfig(ts, args))
	if neg {
		if err == nil {
			st.Close()
			ts.Fatalf("%s opened", args[0])
		}
		fmt.Fprintln(ts.Stdout(), "not opened:", err)
		return
	}
	ts.Check(err)
	defer st.Close()
	ti, err := st.Store.TokenByLabel(ctx, "recovered")
	ts.Check(err)
	ts.Check(st.Store.Login(ctx, ti.UUID, keystore.RoleUser, scriptUserPIN))
	ids, err := st.Store.Find(ctx, ti.UUID, keystore.Filter{IncludePrivate: true, Label: []byte("k")})
	ts.Check(err)
	if len(ids) != 1 {
		ts.Fatalf("%d keys labelled k", len(ids))
	}
	obj, err := st.Store.Open(ctx, ids[0])
	ts.Check(err)
	if string(obj.Secret) != string(scriptSecret) {
		ts.Fatalf("the key's value changed")
	}
	fmt.Fprintln(ts.Stdout(), "key opened, value intact")
}

// waitsock PATH waits up to 30 s for a daemon to answer on a socket.
func cmdWaitsock(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitsock PATH")
	}
	path := ts.MkAbs(args[0])
	for range 300 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Fatalf("nothing answers on %s", args[0])
}

// exits CODE PROGRAM ARGS... runs a program as exec does and checks its
// exit code, which `! exec` cannot.
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROGRAM ARGS...")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("%s: %v", args[1], err)
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", args[1], got, want)
	}
}

// sqlexec DB STATEMENT... runs SQL statements on a keystore file behind
// the daemon's back, as someone editing it would.
func cmdSQLExec(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: sqlexec DB STATEMENT...")
	}
	db, err := sql.Open("sqlite3", "file:"+ts.MkAbs(args[0])+"?_busy_timeout=10000")
	ts.Check(err)
	defer db.Close()
	db.SetMaxOpenConns(1) // a PRAGMA holds for the statements after it
	for _, q := range args[1:] {
		if _, err := db.Exec(q); err != nil {
			ts.Fatalf("%s: %v", q, err)
		}
	}
}
