package swtpm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"hsmemu/internal/newfile"
)

// The state key. swtpm encrypts its state files (AES-256-CBC, with an
// HMAC) under a key given with --key; a copy of the state directory
// without the key opens nothing. The key is 32 bytes, kept in a file of
// 64 hex digits outside the state directory, readable by its owner only.

var (
	// ErrStateEncrypted: the state is encrypted and no key was given.
	ErrStateEncrypted = errors.New("the swtpm state is encrypted and no state key was given")
	// ErrStateNotEncrypted: a key was given for a state that is not
	// encrypted (EncryptState encrypts it).
	ErrStateNotEncrypted = errors.New("the swtpm state is not encrypted")
	// ErrWrongStateKey: the key given does not open the state.
	ErrWrongStateKey = errors.New("the swtpm state key does not open this state")
)

// permanentState is the file swtpm keeps the TPM's permanent state in.
const permanentState = "tpm2-00.permall"

// StateEncrypted reports whether swtpm's permanent state in dir is
// encrypted, and whether there is one. swtpm's state blobs start with a
// header: version u8, minimum version u8, header size u16, flags u16,
// total length u32; flag 1 marks an encrypted blob.
func StateEncrypted(dir string) (encrypted, exists bool, err error) {
	f, err := os.Open(filepath.Join(dir, permanentState))
	if errors.Is(err, os.ErrNotExist) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("swtpm state: %w", err)
	}
	defer f.Close()
	var hdr [10]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil {
		return false, true, fmt.Errorf("swtpm state %s: header: %w", f.Name(), err)
	}
	if hdr[0] != 2 || binary.BigEndian.Uint16(hdr[2:]) != 10 {
		return false, true, fmt.Errorf("swtpm state %s: not a state blob swtpm 0.7 writes (version %d)", f.Name(), hdr[0])
	}
	return binary.BigEndian.Uint16(hdr[4:])&1 != 0, true, nil
}

// CheckKeyFile checks a state key file: 64 hex digits (a newline may
// follow), not readable or writable by group or others, and outside the
// state directory dir (a key beside the state protects nothing).
func CheckKeyFile(path, dir string) error {
	if err := CheckKeyPlace(path, dir); err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return fmt.Errorf("swtpm state key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("swtpm state key %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("swtpm state key %s is open to other users (mode %04o): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(abs)
	if err != nil {
		return fmt.Errorf("swtpm state key: %w", err)
	}
	defer clear(b)
	if k := bytes.TrimRight(b, "\n"); len(k) != 64 || !isHex(k) {
		return fmt.Errorf("swtpm state key %s must be 64 hex digits (32 bytes)", path)
	}
	return nil
}

// CheckKeyPlace refuses a key file path inside the state directory dir.
func CheckKeyPlace(path, dir string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if absDir, err := filepath.Abs(dir); err == nil {
		if rel, err := filepath.Rel(absDir, abs); err == nil && !strings.HasPrefix(rel, "..") {
			return fmt.Errorf("swtpm state key %s is inside the state directory %s: a copy of the directory would carry its key; keep it elsewhere", path, dir)
		}
	}
	return nil
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// NewKeyFile writes a fresh state key to path (which must not exist),
// owner-only.
func NewKeyFile(path string, random io.Reader) error {
	k := make([]byte, 32)
	defer clear(k)
	if _, err := io.ReadFull(random, k); err != nil {
		return err
	}
	h := []byte(hex.EncodeToString(k) + "\n")
	defer clear(h)
	// Whole and durable before the state is encrypted under it, or not
	// there at all: a truncated key file would encrypt the state under a
	// key no one has.
	err := newfile.Write(path, 0o600, func(f *os.File) error {
		_, err := f.Write(h)
		return err
	})
	if err != nil {
		return fmt.Errorf("swtpm state key: %w", err)
	}
	return nil
}

// keyArgs are swtpm's arguments for a state key file, named absolutely:
// swtpm runs in its state directory.
func keyArgs(keyFile string) []string {
	if abs, err := filepath.Abs(keyFile); err == nil {
		keyFile = abs
	}
	return []string{"--key", "file=" + keyFile + ",format=hex,mode=aes-256-cbc"}
}

// checkStateKey matches the state in dir with the key given, before swtpm
// starts: swtpm's own answer to a mismatch is a failure mode and a log.
func checkStateKey(dir, keyFile string) error {
	enc, exists, err := StateEncrypted(dir)
	switch {
	case err != nil:
		return err
	case !exists:
		return nil
	case enc && keyFile == "":
		return fmt.Errorf("%w: give its key file", ErrStateEncrypted)
	case !enc && keyFile != "":
		return fmt.Errorf("%w: encrypt it under the key first (hsmemu tpm encrypt-state), or give no key", ErrStateNotEncrypted)
	}
	return nil
}

// EncryptState encrypts the unencrypted swtpm state in cfg.Dir under the
// key in cfg.KeyFile, through swtpm itself: a swtpm without the key hands
// out the TPM's permanent state on its control channel, a swtpm with the
// key takes it in and writes it encrypted, and that file replaces the
// unencrypted one. No swtpm may be serving the directory. The TPM is the
// same TPM afterwards (its seeds, its keys, its NV).
//
// The unencrypted state's blocks may survive on the disk, and copies of
// the directory made before stay unencrypted: they open as before.
func EncryptState(ctx context.Context, cfg Config) error {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return err
	}
	if err := CheckKeyFile(cfg.KeyFile, filepath.Dir(dir)); err != nil {
		return err
	}
	enc, exists, err := StateEncrypted(dir)
	switch {
	case err != nil:
		return err
	case !exists:
		return fmt.Errorf("no swtpm state in %s to encrypt", dir)
	case enc:
		return fmt.Errorf("the swtpm state in %s is encrypted already", dir)
	}
	bin, err := lookPath(cfg.SearchPath)
	if err != nil {
		return err
	}
	ioctl := filepath.Join(filepath.Dir(bin), "swtpm_ioctl")
	if _, err := os.Stat(ioctl); err != nil {
		if ioctl, err = exec.LookPath("swtpm_ioctl"); err != nil {
			return fmt.Errorf("%w: swtpm_ioctl: %s", ErrMissing, missingHint)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	if pid, held := swtpmLockHolder(dir); held {
		return fmt.Errorf("%w: swtpm process %d is serving %s; stop it first", ErrInUse, pid, dir)
	}
	work, err := os.MkdirTemp(dir, ".encrypt-")
	if err != nil {
		return err
	}
	blob := filepath.Join(work, "permanent")
	defer func() {
		wipeFile(blob)
		os.RemoveAll(work)
	}()
	newDir := filepath.Join(work, "new")
	if err := os.Mkdir(newDir, 0o700); err != nil {
		return err
	}
	// Out of the unencrypted swtpm, into the one with the key.
	// The state is handed out by a TPM that has been initialised, and
	// taken in by one that has not been yet.
	steps := []struct {
		dir, key string
		flags    []string
		cmds     [][]string
	}{
		{dir: dir, flags: []string{"--flags", "not-need-init"}, cmds: [][]string{{"--save", "permanent", blob}}},
		{dir: newDir, key: cfg.KeyFile, cmds: [][]string{{"--load", "permanent", blob}, {"-i"}}},
	}
	for _, st := range steps {
		if err := runWithCtrl(ctx, bin, ioctl, st.dir, work, st.key, st.flags, st.cmds); err != nil {
			return err
		}
	}
	if enc, exists, err := StateEncrypted(newDir); err != nil || !exists || !enc {
		return fmt.Errorf("swtpm did not write an encrypted state (%v)", err)
	}
	// The volatile state, if any, is the unencrypted swtpm's: a started
	// TPM begins without it.
	os.Remove(filepath.Join(dir, "tpm2-00.volatilestate"))
	return os.Rename(filepath.Join(newDir, permanentState), filepath.Join(dir, permanentState))
}

// runWithCtrl runs a swtpm on stateDir with a control channel in work,
// sends it cmds through swtpm_ioctl, shuts it down and waits for it.
func runWithCtrl(ctx context.Context, bin, ioctl, stateDir, work, keyFile string, flags []string, cmds [][]string) error {
	ctrl := filepath.Join(work, "ctrl")
	data := filepath.Join(work, "data")
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + stateDir + ",mode=0600",
		"--server", "type=unixio,path=" + data + ",mode=0600", "--ctrl", "type=unixio,path=" + ctrl + ",mode=0600"}
	if keyFile != "" {
		args = append(args, keyArgs(keyFile)...)
	}
	args = append(args, flags...)
	var log bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting swtpm: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stop := func() {
		cmd.Process.Kill()
		<-done
	}
	// The socket's file appears when swtpm binds it, a moment before it
	// listens: wait until a connection is taken.
	deadline := time.Now().Add(defaultStartTimeout)
	for {
		if c, err := net.DialTimeout("unix", ctrl, time.Second); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("swtpm did not open its control channel: %s", log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range append(cmds, []string{"-s"}) {
		out, err := exec.CommandContext(ctx, ioctl, append([]string{"--unix", ctrl}, c...)...).CombinedOutput()
		if err != nil {
			stop()
			return fmt.Errorf("swtpm_ioctl %s: %v: %s%s", strings.Join(c, " "), err, out, log.String())
		}
	}
	select {
	case <-done:
	case <-time.After(defaultStartTimeout):
		stop()
		return errors.New("swtpm did not exit after its shutdown")
	}
	os.Remove(ctrl)
	os.Remove(data)
	return nil
}

// RemoveFile overwrites a file with zeros and removes it.
func RemoveFile(path string) error {
	wipeFile(path)
	return os.Remove(path)
}

// wipeFile overwrites a file with zeros before it is removed.
func wipeFile(path string) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	if fi, err := f.Stat(); err == nil {
		f.Write(make([]byte, fi.Size()))
		f.Sync()
	}
	f.Close()
}
