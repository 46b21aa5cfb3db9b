package tpmroot_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"hsmemu/tpmroot"
	"hsmemu/tpmroot/tpmtest"
)

func randomAuth(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func daInfo(t testing.TB, tpm *tpmroot.TPM) tpmroot.DAInfo {
	t.Helper()
	da, err := tpm.DAInfo()
	if err != nil {
		t.Fatal(err)
	}
	return da
}

// TestPINSecret: a PIN-bound secret opens with its authorisation only; a
// wrong one is refused and counted by the TPM; the seal holds neither the
// secret nor the authorisation in clear, and another TPM refuses it.
func TestPINSecret(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	auth := randomAuth(t)
	seal, secret, err := tpm.SealPINSecret(auth)
	if err != nil {
		t.Fatal(err)
	}
	if len(secret) != 32 || bytes.Contains(seal, secret) || bytes.Contains(seal, auth) {
		t.Fatalf("seal of %d bytes holds the secret or its authorisation in clear (secret %d bytes)", len(seal), len(secret))
	}
	got, err := tpm.UnsealPINSecret(seal, auth)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal with the right authorisation: %x, %v", got, err)
	}
	before := daInfo(t, tpm).Counter
	wrong := bytes.Clone(auth)
	wrong[0] ^= 1
	if _, err := tpm.UnsealPINSecret(seal, wrong); !errors.Is(err, tpmroot.ErrPINAuthFail) {
		t.Fatalf("unseal with a wrong authorisation: %v, want ErrPINAuthFail", err)
	}
	var marked interface{ PINAuthFailure() }
	if _, err := tpm.UnsealPINSecret(seal, wrong); !errors.As(err, &marked) {
		t.Fatalf("a wrong authorisation's error %T does not say so to the keystore", err)
	}
	if after := daInfo(t, tpm).Counter; after != before+2 {
		t.Fatalf("DA counter %d after two wrong authorisations, was %d", after, before)
	}
	// The right one still opens it, and does not clear the count.
	if got, err := tpm.UnsealPINSecret(seal, auth); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal after failures: %v", err)
	}
	// The same secret behind the same authorisation, sealed again.
	again, err := tpm.ResealPINSecret(auth, secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(again, seal) {
		t.Error("a resealed secret has the same seal")
	}
	if got, err := tpm.UnsealPINSecret(again, auth); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal of a resealed secret: %v", err)
	}
	// Seals are checked before anything reaches the TPM.
	for name, bad := range map[string][]byte{
		"empty":     nil,
		"truncated": seal[:len(seal)-1],
		"trailing":  append(bytes.Clone(seal), 0),
		"magic":     append([]byte("XSPN"), seal[4:]...),
	} {
		if _, err := tpm.UnsealPINSecret(bad, auth); err == nil || errors.Is(err, tpmroot.ErrPINAuthFail) {
			t.Errorf("%s seal: %v, want a refusal that is not a PIN failure", name, err)
		}
	}
	// Another TPM refuses it by name.
	other := tpmtest.Start(t)
	if _, err := other.UnsealPINSecret(seal, auth); !errors.Is(err, tpmroot.ErrWrongTPM) {
		t.Fatalf("unseal in another TPM: %v, want ErrWrongTPM", err)
	}
	if h, err := tpm.TransientHandles(); err != nil || len(h) != 1 {
		t.Fatalf("objects loaded besides the SRK: %x, %v", h, err)
	}
}

// TestPINSecretLockout: after the configured number of wrong
// authorisations the TPM refuses every one, the right one included, and
// says for how long.
func TestPINSecretLockout(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	const tries = 4
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: tries, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	auth := randomAuth(t)
	seal, secret, err := tpm.SealPINSecret(auth)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tries {
		if _, err := tpm.UnsealPINSecret(seal, randomAuth(t)); !errors.Is(err, tpmroot.ErrPINAuthFail) {
			t.Fatalf("wrong authorisation %d: %v, want ErrPINAuthFail", i+1, err)
		}
	}
	da := daInfo(t, tpm)
	if da.Counter != tries || da.MaxTries != tries || !da.InLockout {
		t.Fatalf("DA state after %d failures: %+v", tries, da)
	}
	for _, a := range [][]byte{randomAuth(t), auth} {
		_, err := tpm.UnsealPINSecret(seal, a)
		var le *tpmroot.DALockoutError
		if !errors.Is(err, tpmroot.ErrDALockout) || !errors.As(err, &le) {
			t.Fatalf("in lockout: %v, want ErrDALockout", err)
		}
		if le.RetryAfter() != time.Hour {
			t.Fatalf("lockout lasts %s, want an hour (one failure forgiven)", le.RetryAfter())
		}
		t.Log(err)
	}
	if da := daInfo(t, tpm); da.Counter != tries {
		t.Fatalf("refusals in lockout were counted: %+v", da)
	}
	// The master key (noDA) still works: the daemon runs, PIN checks wait.
	p, err := tpm.Provision(tpmroot.ProvisionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := tpm.Load(p.Sealed)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.DeriveKEK([]byte("label")); err != nil {
		t.Fatalf("KEK in lockout: %v", err)
	}
	_ = secret
}

// TestConfigureDA: once configured, the lockout authorisation is set to a
// value nobody keeps, so the counter can no longer be reset by anyone
// reaching the TPM, and the parameters no longer changed.
func TestConfigureDA(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	da := daInfo(t, tpm)
	if da.LockoutAuthSet {
		t.Fatalf("a fresh swtpm has its lockout authorisation set: %+v", da)
	}
	// Before: anyone resets the counter with the empty authorisation.
	auth := randomAuth(t)
	seal, _, err := tpm.SealPINSecret(auth)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.UnsealPINSecret(seal, randomAuth(t)); !errors.Is(err, tpmroot.ErrPINAuthFail) {
		t.Fatal(err)
	}
	if err := tpm.DictionaryAttackLockReset(); err != nil {
		t.Fatalf("reset with the empty lockout authorisation before ConfigureDA: %v", err)
	}
	if da := daInfo(t, tpm); da.Counter != 0 {
		t.Fatalf("counter %d after a reset", da.Counter)
	}

	want := tpmroot.DAParams{MaxTries: 7, Recovery: 90 * time.Second, LockoutRecovery: 2 * time.Hour}
	if err := tpm.ConfigureDA(want); err != nil {
		t.Fatal(err)
	}
	da = daInfo(t, tpm)
	if !da.LockoutAuthSet || da.MaxTries != want.MaxTries || da.Recovery != want.Recovery || da.LockoutRecovery != want.LockoutRecovery {
		t.Fatalf("after ConfigureDA(%+v): %+v", want, da)
	}
	if _, err := tpm.UnsealPINSecret(seal, randomAuth(t)); !errors.Is(err, tpmroot.ErrPINAuthFail) {
		t.Fatal(err)
	}
	err = tpm.DictionaryAttackLockReset()
	if !errors.Is(err, tpm2.TPMRCAuthFail) && !errors.Is(err, tpm2.TPMRCBadAuth) {
		t.Fatalf("reset with the empty lockout authorisation after ConfigureDA: %v, want an authorisation failure", err)
	}
	if da := daInfo(t, tpm); da.Counter != 1 {
		t.Fatalf("the counter was reset: %+v", da)
	}
	if err := tpm.ConfigureDA(tpmroot.ManagedDA); !errors.Is(err, tpmroot.ErrLockoutAuthSet) {
		t.Fatalf("ConfigureDA again: %v, want ErrLockoutAuthSet", err)
	}
}

// TestPINSecretAuthWithZeros: an authorisation with zero bytes anywhere,
// trailing ones included, works like any other (see authValue).
func TestPINSecretAuthWithZeros(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	for _, zeros := range [][]int{{0}, {5}, {31}, {30, 31}, {0, 1, 2, 3}} {
		auth := randomAuth(t)
		for i := range auth {
			if auth[i] == 0 {
				auth[i] = 7
			}
		}
		for _, i := range zeros {
			auth[i] = 0
		}
		seal, secret, err := tpm.SealPINSecret(auth)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := tpm.UnsealPINSecret(seal, auth); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("zeros at %v: %v", zeros, err)
		}
	}
}

// TestPINSecretFullTPM: with the SRK and two master keys loaded (a master
// key rotation under way), swtpm's three object slots are full; a PIN
// check makes room and puts the master keys back.
func TestPINSecretFullTPM(t *testing.T) {
	t.Parallel()
	tpm := tpmtest.Start(t)
	if err := tpm.ConfigureDA(tpmroot.DAParams{MaxTries: 100, Recovery: time.Hour, LockoutRecovery: time.Hour}); err != nil {
		t.Fatal(err)
	}
	var roots []*tpmroot.Root
	var keks [][]byte
	for range 2 {
		p, err := tpm.Provision(tpmroot.ProvisionOptions{})
		if err != nil {
			t.Fatal(err)
		}
		r, err := tpm.Load(p.Sealed)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		roots = append(roots, r)
		keks = append(keks, mustKEK(t, r, "kek"))
	}
	auth := randomAuth(t)
	seal, secret, err := roots[0].SealPINSecret(auth)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got, err := roots[1].UnsealPINSecret(seal, auth); err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("unseal with the TPM full: %v", err)
		}
		if _, err := roots[1].UnsealPINSecret(seal, randomAuth(t)); !errors.Is(err, tpmroot.ErrPINAuthFail) {
			t.Fatalf("wrong auth with the TPM full: %v", err)
		}
		for i, r := range roots {
			if k := mustKEK(t, r, "kek"); !bytes.Equal(k, keks[i]) {
				t.Fatalf("master key %d changed", i)
			}
		}
	}
}
