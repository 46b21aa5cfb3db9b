package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"hsmemu/bench"
	"hsmemu/internal/newfile"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure PKCS#11 modules side by side; hotpath: the daemon's in-process hot path",
		Description: `Every module named with --module is measured in the same run, interleaved,
so the ratios hold on a noisy machine; the first module is the baseline of
the ratio column. Operations a module lacks are reported as unsupported.

PINs come from --user-pin-file and --so-pin-file, or HSMEMU_USER_PIN and
HSMEMU_SO_PIN (HSMEMU_BENCH_PIN and HSMEMU_BENCH_SO_PIN still work), never
the command line; without them, 1234 and 12345678, which --setup gives the
scratch token it makes.

Operations (--op, default all):
` + opList() + `
Examples:
  hsmemu bench --module bin/hsmemu-pkcs11.so --module /usr/lib/softhsm/libsofthsm2.so --setup
  hsmemu bench --module bin/hsmemu-pkcs11.so --op wrap --op unwrap --concurrency 1,2 --runs 5
  hsmemu bench --module /usr/lib/softhsm/libsofthsm2.so --module bin/hsmemu-pkcs11.so --convention two-call,one-call --objects session
  hsmemu bench --module bin/hsmemu-pkcs11.so --json > run.json
  hsmemu bench --module bin/hsmemu-pkcs11.so --module /usr/lib/softhsm/libsofthsm2.so --setup --chart run.svg --html run.html
  hsmemu bench --module old/hsmemu-pkcs11.so@/tmp/old.sock --module bin/hsmemu-pkcs11.so@/tmp/new.sock --setup
  hsmemu bench --module bin/hsmemu-pkcs11.so@/run/hsmemu/hsmemu.sock --module bin/hsmemu-pkcs11.so@tls://127.0.0.1:5696 \
      --tls-cert app.pem --tls-key app.key --tls-ca ca.pem --op sign-ecdsa-p256 --op wrap --op random-32 --setup
  hsmemu bench --module bin/hsmemu-pkcs11.so --serve sqlite --serve 'postgres:///bench?host=/run/postgresql' --setup \
      --op sign-ecdsa-p256 --op wrap --op unwrap --op generate-aes-256 --op find
  hsmemu bench hotpath`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "module", Usage: "a PKCS#11 module to measure, `PATH[@SOCKET]` (repeat for more; the first is the baseline; @SOCKET points an hsmemu module at its daemon, @ring:SOCKET or @socket:SOCKET also chooses its transport, @tls://HOST:PORT at a remote one)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "the client certificate of modules given @tls://", EnvVars: []string{"HSMEMU_TLS_CERT"}},
			&cli.StringFlag{Name: "tls-key", Usage: "its key", EnvVars: []string{"HSMEMU_TLS_KEY"}},
			&cli.StringFlag{Name: "tls-ca", Usage: "the CA bundle that verifies the remote daemons", EnvVars: []string{"HSMEMU_TLS_CA"}},
			&cli.StringFlag{Name: "token", Value: "hsmemu-bench", Usage: "label of the token to use"},
			benchPINFlag(userPIN, "1234"), benchPINFlag(soPIN, "12345678"),
			// The old flags that took PINs on the command line: refused.
			&cli.StringFlag{Name: "pin", Hidden: true}, &cli.StringFlag{Name: "so-pin", Hidden: true},
			&cli.BoolFlag{Name: "setup", Usage: "create the token (C_InitToken, C_InitPIN) where it is missing"},
			&cli.StringSliceFlag{Name: "op", Usage: "an operation to measure (repeat for more; default all)"},
			&cli.StringFlag{Name: "concurrency", Value: "1", Usage: "comma-separated worker counts, each worker its own session"},
			&cli.DurationFlag{Name: "duration", Value: 2e9, Usage: "measuring window of each operation, module and concurrency in each run"},
			&cli.DurationFlag{Name: "warmup", Value: 2e8, Usage: "unmeasured calls before each window"},
			&cli.IntFlag{Name: "runs", Value: 3, Usage: "runs; the median is reported, with the min and max"},
			&cli.StringFlag{Name: "objects", Value: "token", Usage: "the ops' keys are `token` or `session` objects"},
			&cli.StringFlag{Name: "convention", Value: bench.TwoCall, Usage: "how ops with an output buffer make that call: two-call (a NULL buffer for the length first, as most applications do), one-call, or both, comma-separated"},
			&cli.IntFlag{Name: "find-among", Value: 10000, Usage: "token objects that find searches among (populated once)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON, one object per operation, module and concurrency"},
			&cli.BoolFlag{Name: "csv", Usage: "print CSV"},
			&cli.StringFlag{Name: "chart", Usage: "also draw ops/s into this SVG file: a panel per operation on a linear axis, a bar per module with its ratio to the baseline"},
			&cli.StringFlag{Name: "html", Usage: "also write a self-contained report to share into this HTML file: the machine and versions, the set-up, the table and the charts"},
			&cli.StringSliceFlag{Name: "serve", Usage: "start a daemon for the run with its keystore in `DB` (sqlite, or an empty PostgreSQL database's connection string; repeat for more), each on a scratch state directory and managed swtpm, measured through the first --module, the hsmemu module"},
			dbFlags()[1],
		},
		Subcommands: []*cli.Command{hotpathCommand()},
		Action: func(c *cli.Context) error {
			// A run takes minutes: a chart or report that would be
			// refused at the end is refused first.
			for _, f := range []string{"chart", "html"} {
				if err := checkOut(c, c.String(f)); err != nil {
					return err
				}
			}
			if c.Bool("json") && c.Bool("csv") {
				return usagef(c, "choose one of --json and --csv")
			}
			conc, err := parseInts(c.String("concurrency"))
			if err != nil {
				return usagef(c, "--concurrency: %v", err)
			}
			if c.IsSet("pin") || c.IsSet("so-pin") {
				return usagef(c, "--pin and --so-pin are gone: a PIN never comes from the command line, where other users see it; give --user-pin-file and --so-pin-file, or set HSMEMU_USER_PIN and HSMEMU_SO_PIN")
			}
			pin, err := benchPIN(c, userPIN, "HSMEMU_BENCH_PIN", "1234")
			if err != nil {
				return err
			}
			so, err := benchPIN(c, soPIN, "HSMEMU_BENCH_SO_PIN", "12345678")
			if err != nil {
				return err
			}
			var session bool
			switch c.String("objects") {
			case "token":
			case "session":
				session = true
			default:
				return cli.Exit(fmt.Sprintf("--objects %q: token or session (the objects find searches among are --find-among)", c.String("objects")), 2)
			}
			var convs []string
			for _, v := range strings.Split(c.String("convention"), ",") {
				convs = append(convs, strings.TrimSpace(v))
			}
			opt := bench.Options{
				Modules: c.StringSlice("module"), Token: c.String("token"), PIN: pin, SOPIN: so,
				Setup: c.Bool("setup"), Ops: c.StringSlice("op"), Concurrency: conc, Duration: c.Duration("duration"),
				Warmup: c.Duration("warmup"), Runs: c.Int("runs"), Objects: c.Int("find-among"),
				Conventions: convs, SessionKeys: session,
			}
			if bench.IsTerminal(os.Stderr) {
				opt.Progress = os.Stderr
			}
			// Where the modules read them at C_Initialize.
			for flag, env := range map[string]string{"tls-cert": "HSMEMU_TLS_CERT", "tls-key": "HSMEMU_TLS_KEY", "tls-ca": "HSMEMU_TLS_CA"} {
				if v := c.String(flag); v != "" {
					os.Setenv(env, v)
				}
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			if dbs := c.StringSlice("serve"); len(dbs) > 0 {
				if len(opt.Modules) == 0 || strings.Contains(opt.Modules[0], "@") {
					return usagef(c, "--serve measures its daemons through the first --module, hsmemu's module, given as a PATH alone")
				}
				specs, engines, stopDaemons, err := startBenchDaemons(ctx, opt.Modules[0], dbs, c.String("db-password-file"))
				if err != nil {
					return failf(c, exitError, "failed", "%v", err)
				}
				defer func() {
					if err := stopDaemons(); err != nil {
						warn(c, fmt.Sprintf("hsmemu bench: stopping the daemons it started: %v", err))
					}
				}()
				opt.Modules = append(specs, opt.Modules[1:]...)
				opt.Labels = engines
			}
			rep, err := bench.Run(ctx, opt)
			if err != nil {
				return failf(c, exitError, "failed", "%v", err)
			}
			switch {
			case c.Bool("json"):
				err = printJSON(c.App.Writer, benchJSON(rep))
			case c.Bool("csv"):
				err = bench.WriteCSV(os.Stdout, rep)
			default:
				err = bench.WriteTable(os.Stdout, rep)
			}
			if err != nil {
				return err
			}
			if path := c.String("chart"); path != "" {
				if err := writeFile(c, path, func(w io.Writer) error { return bench.WriteSVG(w, rep) }); err != nil {
					return err
				}
			}
			if path := c.String("html"); path != "" {
				about := bench.About{Version: Version, Commit: Commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
				if err := writeFile(c, path, func(w io.Writer) error { return bench.WriteHTML(w, rep, about) }); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// benchPIN is a PIN for the benchmark's token: from its file or variable
// as every command takes it, or the variable bench took before (env), or,
// with neither, the default that --setup gives the scratch token it makes.
// benchPINFlag is p's file flag as bench takes it: a run is unattended,
// so without a file or a variable it uses def, the scratch token's PIN,
// and never asks.
func benchPINFlag(p pinSource, def string) cli.Flag {
	return &cli.StringFlag{Name: p.flag + "-file", Usage: "read the " + p.prompt + " from this file (first line), or set " + p.env + "; without either, " + def}
}

func benchPIN(c *cli.Context, p pinSource, env, def string) (string, error) {
	if c.String(p.flag+"-file") == "" && os.Getenv(p.env) == "" {
		if v := os.Getenv(env); v != "" {
			return v, nil
		}
		return def, nil
	}
	b, err := readPIN(c, p, false)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func opList() string {
	var b strings.Builder
	d := bench.OpDescriptions()
	for _, name := range bench.OpNames() {
		fmt.Fprintf(&b, "  %-19s %s\n", name, d[name])
	}
	return b.String()
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive whole number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func hotpathCommand() *cli.Command {
	return &cli.Command{
		Name:  "hotpath",
		Usage: "measure the keystore's in-process hot path beside its floors and a bare Unix-socket round trip",
		Description: `Opens a scratch keystore on a TPM (a managed swtpm by default), then measures,
interleaved and from this one binary: opening a stored AES-256 key warm (in the
cache) and cold (from SQLite), sealing one (a committed write), a bare AES-256-GCM
open and a bare SQLite point read (the floors), and a bare request and reply
over a Unix socket to another process (the floor of every module call).

Examples:
  hsmemu bench hotpath
  hsmemu bench hotpath --count 10 --json`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "count", Value: 5, Usage: "repetitions of each measurement; the median is reported"},
			&cli.StringFlag{Name: "tpm", Value: "managed", Usage: "the TPM for the scratch keystore, as hsmemu serve --tpm takes it"},
			&cli.StringFlag{Name: "scratch-dir", Usage: "where to make the scratch state directory (default: the system's temporary directory)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			&cli.BoolFlag{Name: "quick", Usage: "a smoke test: a few hundred iterations of each, timed by hand; not a measurement"},
		},
		Action: func(c *cli.Context) error {
			opt := bench.HotpathOptions{StateDir: c.String("scratch-dir"), TPM: c.String("tpm"), Count: c.Int("count"), Quick: c.Bool("quick")}
			if bench.IsTerminal(os.Stderr) {
				opt.Progress = os.Stderr
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			rs, err := bench.Hotpath(ctx, opt)
			if err != nil {
				return failf(c, exitError, "failed", "%v", err)
			}
			if c.Bool("json") {
				if rs == nil {
					rs = []bench.HotpathResult{}
				}
				return printJSON(c.App.Writer, rs)
			}
			return bench.WriteHotpathTable(os.Stdout, rs)
		},
	}
}

// writeFile writes a new file (0644) by write, whole or not at all.
func writeFile(c *cli.Context, path string, write func(io.Writer) error) error {
	return outFileErr(c, path, newfile.Write(path, 0o644, func(f *os.File) error { return write(f) }))
}

// benchReport is bench's --json result: the report's fields, its duration
// in seconds, in the form every --json output takes (bench.Report's own
// encoding, which bench.ReadJSON reads, leaves empty fields out).
type benchReport struct {
	Started     time.Time         `json:"started"`
	Host        string            `json:"host"`
	CPUs        int               `json:"cpus"`
	DurationS   float64           `json:"duration_s"`
	Runs        int               `json:"runs"`
	Modules     []string          `json:"modules"`
	Concurrency []int             `json:"concurrency"`
	Conventions []string          `json:"conventions"`
	Keys        string            `json:"keys"`
	Setup       []bench.SetupNote `json:"setup"`
	Floor       *bench.Result     `json:"floor"`
	RingFloor   *bench.Result     `json:"ring_floor"`
	TLSFloor    *bench.Result     `json:"tls_floor"`
	Bare        []bench.Result    `json:"bare"`
	Results     []bench.Result    `json:"results"`
}

func benchJSON(rep *bench.Report) benchReport {
	return benchReport{Started: rep.Started, Host: rep.Host, CPUs: rep.CPUs, DurationS: rep.Duration.Seconds(), Runs: rep.Runs,
		Modules: rep.Modules, Concurrency: rep.Concurrency, Conventions: rep.Conventions, Keys: rep.Keys, Setup: rep.Setup, Floor: rep.Floor, RingFloor: rep.RingFloor, TLSFloor: rep.TLSFloor, Bare: rep.Bare, Results: rep.Results}
}
