package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/daemon"
	"hsmemu/daemon/metrics"
	"hsmemu/daemon/token"
	"hsmemu/internal/harden"
	"hsmemu/keystore"
	"hsmemu/tpmroot"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon: open (or provision) the state directory and serve the PKCS#11 module",
		Description: `The first start on an empty state directory provisions a new master key
in the TPM and says so; later starts open it. Without --tpm the daemon uses
/dev/tpmrm0 when present, else a swtpm it starts and stops itself, with its
state under the state directory.

Example:
   hsmemu serve --state-dir /var/lib/hsmemu --tpm managed`,
		Flags: []cli.Flag{
			stateDirFlag("state directory"),
			dbFlags()[0], dbFlags()[1],
			&cli.DurationFlag{Name: "db-statement-timeout", Value: keystore.DefaultStatementTimeout,
				Usage: "on PostgreSQL, how long a statement, commit or rollback may wait for the server before its call fails (CKR_DEVICE_ERROR) and the connection is dropped"},
			tpmFlag(),
			tpmStateKeyFlag(),
			&cli.StringFlag{Name: "socket", Usage: "the module's socket (default: STATE-DIR/hsmemu.sock)", EnvVars: []string{"HSMEMU_SOCKET"}},
			&cli.StringFlag{Name: "socket-group", Usage: "a group whose members may connect (the socket is then 0660)"},
			&cli.UintSliceFlag{Name: "allow-uid", Usage: "a user id allowed to connect besides the daemon's own and root (repeatable)"},
			&cli.StringFlag{Name: "default-tier", Usage: "tier of tokens created by C_InitToken: standard or premium", Value: "standard"},
			&cli.UintFlag{Name: "pin-kdf-time", Usage: "Argon2id passes for the PINs of new tokens", Value: uint(keystore.DefaultArgon2.Time)},
			&cli.UintFlag{Name: "pin-kdf-memory", Usage: "Argon2id memory in KiB for the PINs of new tokens", Value: uint(keystore.DefaultArgon2.MemoryKiB)},
			&cli.DurationFlag{Name: "pin-failure-delay", Usage: "delay after a wrong PIN, doubling with each further one (0 disables)", Value: 200 * time.Millisecond},
			&cli.BoolFlag{Name: "no-rings", Usage: "decline the module's shared-memory rings: every frame goes over the socket (docs/protocol.md, \"Rings\")"},
			&cli.IntFlag{Name: "pin-max-failures", Usage: "wrong PINs in a row that lock a role", Value: 10},
			&cli.IntFlag{Name: "memory-budget", Usage: "MiB that requests and replies in flight may hold, all connections together (half each)", Value: daemon.DefaultBudget >> 20},
			&cli.IntFlag{Name: "operation-budget", Usage: "MiB that operations may hold between calls, all applications together (multipart AEAD input, outputs kept after a length query)", Value: token.DefaultOpBudget >> 20},
			&cli.IntFlag{Name: "session-budget", Usage: "MiB that session objects and searches' results may hold, all applications together", Value: token.DefaultSessionBudget >> 20},
			&cli.IntFlag{Name: "max-sessions", Usage: "sessions one application may have open at once (CK_TOKEN_INFO's ulMaxSessionCount)", Value: token.DefaultMaxSessions},
			&cli.IntFlag{Name: "max-sessions-total", Usage: "sessions all applications together may have open at once", Value: token.DefaultMaxAllSessions},
			&cli.BoolFlag{Name: "legacy-algorithms", Usage: "enable the legacy algorithms on tokens that are not premium: single and triple DES, DSA, RSA keys of 1024 bits, SHA-1 in new signatures (docs/mechanisms.md)"},
			&cli.DurationFlag{Name: "pin-cache-ttl", Usage: "how long a PIN that opened its token is remembered after its last use, sparing later logins the Argon2id stretch (0 never)", Value: 15 * time.Minute},
			&cli.StringFlag{Name: "pprof", Usage: "serve Go's profiler (net/http/pprof) on a Unix socket at this path, created 0600 (curl --unix-socket PATH http://x/debug/pprof/)"},
			&cli.DurationFlag{Name: "anchor-interval", Usage: "how often the keystore is anchored in the TPM's NV counter, when it changed: writes newer than the last anchor can be rolled back (default 10s; 15m with a TPM device, whose NV memory wears)"},
			&cli.DurationFlag{Name: "purge-interval", Usage: "how often deleted objects whose retention has ended are purged (and once at start); with several daemons on one database, one purges at a time (docs/cluster.md)", Value: time.Hour},
			&cli.StringFlag{Name: "metrics", Usage: "serve Prometheus metrics at /metrics on a TCP host:port (e.g. 127.0.0.1:9464) or a Unix socket path, created 0600 (docs/metrics.md)"},
			&cli.StringFlag{Name: "listen", Usage: "also serve remote modules over TCP with mutual TLS 1.3 at tls://HOST:PORT (docs/remote.md)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "the listener's certificate (PEM; reloaded on SIGHUP)"},
			&cli.StringFlag{Name: "tls-key", Usage: "the listener's private key (PEM; reloaded on SIGHUP)"},
			&cli.StringFlag{Name: "client-ca", Usage: "the CA bundle that verifies client certificates (PEM; reloaded on SIGHUP)"},
			&cli.StringSliceFlag{Name: "tls-allow", Usage: "IDENTITY=LABEL[,LABEL...]: a client identity (cn:NAME or uri:URI) and the tokens it sees, * for all (repeatable)"},
			&cli.StringSliceFlag{Name: "tls-admin", Usage: "a client identity (cn:NAME or uri:URI) that may make admin calls over TLS (repeatable)"},
			&cli.StringFlag{Name: "policy", Usage: "a policy file mapping client identities to tokens, admin rights and limits (JSON, docs/remote.md; reloaded on SIGHUP)"},
			&cli.StringFlag{Name: "lock-memory", Usage: "lock the daemon's memory out of swap: auto (when RLIMIT_MEMLOCK is unlimited or the process has CAP_IPC_LOCK; otherwise say why not), require (refuse to start unlocked), off", Value: "auto"},
		},
		Action: func(c *cli.Context) error {
			if err := checkLogFormat(c); err != nil {
				return cli.Exit("hsmemu serve: "+err.Error(), 2)
			}
			if err := checkServeDurations(c); err != nil {
				return err
			}
			log := logger(c)
			lockMode, err := harden.ParseLockMode(c.String("lock-memory"))
			if err != nil {
				return cli.Exit("hsmemu serve: --lock-memory: "+err.Error(), 2)
			}
			if p := c.String("pprof"); p != "" {
				if err := checkProfilerPath(p); err != nil {
					return cli.Exit("hsmemu serve: --pprof: "+err.Error(), 2)
				}
			}
			if a := c.String("metrics"); a != "" {
				if err := checkMetricsAddr(a); err != nil {
					return cli.Exit("hsmemu serve: --metrics: want host:port or a socket path: "+err.Error(), 2)
				}
			}
			// First of all, before any key is in memory: no core dumps,
			// no ptrace by the same user, memory locked.
			hard, err := harden.Process(lockMode)
			if err != nil {
				return cli.Exit("hsmemu serve: "+err.Error(), 1)
			}
			if hard.NotLocked != "" {
				log.Warn("memory is not locked: " + hard.NotLocked)
			}
			log.Info("process hardened", "core_dumps", "off", "ptrace", "off", "memory_locked", hard.Locked)
			tier, err := keystore.ParseTier(c.String("default-tier"))
			if err != nil {
				return cli.Exit("hsmemu serve: --default-tier: "+err.Error(), 2)
			}
			group := -1
			if g := c.String("socket-group"); g != "" {
				grp, err := user.LookupGroup(g)
				if err != nil {
					return cli.Exit("hsmemu serve: --socket-group: "+err.Error(), 2)
				}
				if group, err = strconv.Atoi(grp.Gid); err != nil {
					return cli.Exit("hsmemu serve: --socket-group: "+err.Error(), 2)
				}
			}
			dir := c.String("state-dir")
			sock := c.String("socket")
			if sock == "" {
				sock = filepath.Join(dir, "hsmemu.sock")
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			argon := keystore.Argon2Params{Time: uint32(c.Uint("pin-kdf-time")), MemoryKiB: uint32(c.Uint("pin-kdf-memory")), Threads: keystore.DefaultArgon2.Threads}
			maxFail := c.Int("pin-max-failures")
			if maxFail < 1 {
				return cli.Exit("hsmemu serve: --pin-max-failures must be at least 1", 2)
			}
			maxSessions := c.Int("max-sessions")
			if maxSessions < 1 || maxSessions > 1<<24 {
				return cli.Exit("hsmemu serve: --max-sessions must be 1 to 16777216", 2)
			}
			allSessions := c.Int("max-sessions-total")
			if allSessions < 1 || allSessions > 1<<30 {
				return cli.Exit("hsmemu serve: --max-sessions-total must be 1 to 1073741824", 2)
			}
			delay := c.Duration("pin-failure-delay")
			if delay <= 0 {
				delay = -1
			}
			memBudget, opBudget, sessBudget := c.Int("memory-budget"), c.Int("operation-budget"), c.Int("session-budget")
			if memBudget < 1 || memBudget > 1<<20 || opBudget < 1 || opBudget > 1<<20 || sessBudget < 1 || sessBudget > 1<<20 {
				return cli.Exit("hsmemu serve: --memory-budget, --operation-budget and --session-budget are 1 to 1048576 MiB", 2)
			}
			tuneRuntime(int64(memBudget+opBudget+sessBudget) << 20)
			st, err := daemon.OpenState(ctx, daemon.StateConfig{Dir: dir, DB: c.String("db"), TPM: c.String("tpm"), TPMStateKey: tpmStateKey(c), Logger: log,
				Store: keystore.Options{Argon2: argon, MaxPINFailures: maxFail, PINCacheTTL: pinCacheTTL(c.Duration("pin-cache-ttl")),
					PasswordFile: c.String("db-password-file"), StatementTimeout: c.Duration("db-statement-timeout")}})
			if err != nil {
				return cli.Exit(fmt.Sprintf("hsmemu serve: %v", err), stateExit(err))
			}
			defer st.Close()
			// What a copy of the state directory gives away, with this
			// TPM: one line per case.
			for _, n := range st.Exposure(ctx) {
				if n.Warn {
					log.Warn(n.Msg)
				} else {
					log.Info(n.Msg)
				}
			}
			if addr := c.String("pprof"); addr != "" {
				if err := serveProfiler(ctx, addr, log); err != nil {
					return cli.Exit("hsmemu serve: --pprof: "+err.Error(), 2)
				}
			}
			var m *metrics.Metrics
			if addr := c.String("metrics"); addr != "" {
				m = metrics.New()
				if err := serveMetrics(ctx, addr, m, log); err != nil {
					return cli.Exit("hsmemu serve: --metrics: "+err.Error(), 1)
				}
			}
			srvCfg := daemon.ServerConfig{Group: group, Limits: daemon.Limits{Budget: int64(memBudget) << 20},
				NoRings: c.Bool("no-rings")}
			for _, uid := range c.UintSlice("allow-uid") {
				srvCfg.AllowUIDs = append(srvCfg.AllowUIDs, uint32(uid))
			}
			// SIGHUP is caught before any listener answers: a reload sent
			// as soon as the daemon is reachable must not meet the
			// default action, which ends the process.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			rl, err := remoteListener(c)
			if err != nil {
				return cli.Exit("hsmemu serve: "+err.Error(), 2)
			}
			ln, err := daemon.Listen(sock, srvCfg)
			if err != nil {
				if rl != nil {
					rl.ln.Close()
				}
				return cli.Exit(fmt.Sprintf("hsmemu serve: %v", err), 1)
			}
			// Deleted objects whose retention has ended are purged at
			// start and then every --purge-interval (an hour).
			d := daemon.New(st, log, daemon.Config{
				Engine: token.Config{DefaultTier: tier, MaxPINFailures: maxFail, FailureDelay: delay, MaxSessions: maxSessions,
					LegacyAlgorithms: c.Bool("legacy-algorithms"), OpBudget: int64(opBudget) << 20,
					SessionBudget: int64(sessBudget) << 20, MaxAllSessions: allSessions},
				Server:     srvCfg,
				Version:    Version,
				PurgeEvery: c.Duration("purge-interval"),

				// Zero: the TPM's default (daemon.AnchorInterval).
				AnchorEvery: c.Duration("anchor-interval"),
				Metrics:     m,
				DBPath:      st.DBPath,
			})
			if c.Bool("legacy-algorithms") {
				log.Warn("legacy algorithms enabled on tokens that are not premium: DES, triple DES, DSA, RSA-1024, SHA-1 signatures")
			}
			go rl.reloadOnHUP(ctx, log, hup)
			if rl != nil {
				d.ListenRemote(rl.ln, rl.config())
				log.Info("serving remote clients", "listen", rl.ln.Addr().String(), "identities", len(rl.policy.Load().Identities))
			}
			log.Info("serving", "socket", sock, "state_dir", dir)
			if err := d.Serve(ctx, ln); err != nil {
				return cli.Exit(fmt.Sprintf("hsmemu serve: %v", err), stateExit(err))
			}
			log.Info("stopped")
			return nil
		},
	}
}

// pinCacheTTL maps the flag's 0 (never) to the keystore's negative.
// checkServeDurations refuses durations out of range, before the daemon
// hardens its process or opens anything. A negative --pin-failure-delay
// or --pin-cache-ttl would otherwise turn the delay or the cache off as 0
// does, silently.
func checkServeDurations(c *cli.Context) error {
	for _, name := range []string{"pin-failure-delay", "pin-cache-ttl"} {
		if c.Duration(name) < 0 {
			return cli.Exit(fmt.Sprintf("hsmemu serve: --%s must not be negative (0 turns it off), not %s", name, c.Duration(name)), 2)
		}
	}
	if c.Duration("db-statement-timeout") <= 0 {
		return cli.Exit("hsmemu serve: --db-statement-timeout must be positive", 2)
	}
	if c.IsSet("anchor-interval") && c.Duration("anchor-interval") <= 0 {
		return cli.Exit("hsmemu serve: --anchor-interval must be positive", 2)
	}
	if c.Duration("purge-interval") <= 0 {
		return cli.Exit("hsmemu serve: --purge-interval must be positive", 2)
	}
	return nil
}

func pinCacheTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// tuneRuntime lets the heap grow to nine times what is live between
// collections, unless GOGC says otherwise. The daemon's live heap is a few
// megabytes and every call allocates a little, so at the default a busy
// daemon collects several times a second, and each collection's pauses
// and background marking land on calls in flight (measured: ECDSA
// signatures through the module 20-23k/s at GOGC=100, 26-27k/s at 800).
//
// Nine times a live heap full of budgeted buffers would be far too much,
// so a soft memory limit, unless GOMEMLIMIT says otherwise, makes the
// collector work harder as the heap nears twice the budgets plus 256 MiB
// for keys, objects and sessions (docs/reliability.md, "Memory bounds").
func tuneRuntime(budgets int64) {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(800)
	}
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set {
		debug.SetMemoryLimit(2*budgets + 256<<20)
	}
}

// stateExit is the exit code of a state directory that failed to open or
// to serve: 2 for a --db written wrong, 6 for a keystore that failed
// verification (rolled back, tampered, or anchored in a counter that is
// not its own), else 1.
func stateExit(err error) int {
	var bad *keystore.BadDBError
	if errors.As(err, &bad) {
		return exitUsage // the --db is written wrong
	}
	if errors.Is(err, keystore.ErrRolledBack) || errors.Is(err, keystore.ErrTampered) || errors.Is(err, tpmroot.ErrCounterAuth) {
		return exitTampered
	}
	return exitError
}
