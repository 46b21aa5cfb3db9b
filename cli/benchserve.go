package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"hsmemu/keystore"
)

// benchDaemon is a daemon `hsmemu bench --serve` started for the run.
type benchDaemon struct {
	dir  string
	sock string
	cmd  *exec.Cmd
	done chan error
}

// startBenchDaemons starts one `hsmemu serve` per --serve value, each on
// a scratch state directory with a managed swtpm of its own and its
// keystore where db says ("sqlite": the state directory's file; a
// PostgreSQL connection string: that database, which must hold no
// domain), and returns each as module@socket for the harness, so that
// daemons on different engines are measured through the same module in
// one run, with each one's engine. stop stops them and removes their directories.
func startBenchDaemons(ctx context.Context, module string, dbs []string, passwordFile string) (specs, engines []string, stop func() error, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, nil, err
	}
	var ds []*benchDaemon
	stop = func() error {
		var errs []error
		for _, d := range ds {
			errs = append(errs, d.stop())
		}
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	for _, db := range dbs {
		args := []string{"serve", "--tpm", "managed"}
		engine := keystore.EngineSQLite
		if db != keystore.EngineSQLite {
			kind, _, err := keystore.ParseDB(db)
			if err != nil {
				return nil, nil, nil, err
			}
			engine = kind
			args = append(args, "--db", db)
			if passwordFile != "" && kind == keystore.EnginePostgres {
				args = append(args, "--db-password-file", passwordFile)
			}
		}
		// The engine in the directory's name names the module in the report.
		dir, err := os.MkdirTemp("", "hsmemu-bench-"+engine+"-")
		if err != nil {
			return nil, nil, nil, err
		}
		d := &benchDaemon{dir: dir, sock: filepath.Join(dir, "s"), done: make(chan error, 1)}
		ds = append(ds, d)
		args = append(args, "--state-dir", dir, "--socket", d.sock)
		d.cmd = exec.Command(self, args...)
		log, err := os.Create(filepath.Join(dir, "serve.log"))
		if err != nil {
			return nil, nil, nil, err
		}
		d.cmd.Stdout, d.cmd.Stderr = log, log
		d.cmd.Env = append(os.Environ(), "HSMEMU_SOCKET=", "HSMEMU_STATE_DIR=", "HSMEMU_DB=")
		if err := d.cmd.Start(); err != nil {
			log.Close()
			return nil, nil, nil, fmt.Errorf("--serve %s: %w", engine, err)
		}
		go func() { d.done <- d.cmd.Wait(); log.Close() }()
		if err := d.wait(ctx); err != nil {
			return nil, nil, nil, fmt.Errorf("--serve %s: %w", engine, err)
		}
		specs = append(specs, module+"@"+d.sock)
		engines = append(engines, engine)
	}
	return specs, engines, stop, nil
}

// wait waits for the daemon's socket to answer, up to a minute (a first
// start provisions the TPM); a daemon that exits says why from its log.
func (d *benchDaemon) wait(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", d.sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			log, _ := os.ReadFile(filepath.Join(d.dir, "serve.log"))
			return fmt.Errorf("the daemon exited (%v): %s", err, strings.TrimSpace(string(log)))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return errors.New("the daemon's socket did not answer within a minute")
}

// stop stops the daemon as a service manager would (SIGINT, then SIGKILL
// after 30 s) and removes its directory.
func (d *benchDaemon) stop() error {
	var err error
	if d.cmd != nil && d.cmd.Process != nil {
		d.cmd.Process.Signal(syscall.SIGINT)
		select {
		case err = <-d.done:
		case <-time.After(30 * time.Second):
			d.cmd.Process.Kill()
			err = <-d.done
		}
		d.done <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 0 {
			err = nil
		}
	}
	return errors.Join(err, os.RemoveAll(d.dir))
}
