package chaos

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"
	"hsmemu/cryptoki/wire"
	"hsmemu/cryptoki/wire/wiretest"
)

// soakSample is one reading of the daemon during a soak.
type soakSample struct {
	at       time.Duration
	rssKiB   int64
	heapKiB  int64 // live heap after a collection; 0 when not read
	threads  int64
	ops      int64
	sessions int
}

// TestSoak runs the daemon under mixed load for HSMEMU_SOAK (make soak:
// 30m): eight applications create, sign with (HMAC, ECDSA), encrypt with
// (AES-GCM), find, read and destroy token objects, open and close
// sessions, log out and in, and now and then drop their connection and
// come back as new applications, while 200 more applications hold 10
// sessions each, idle, and the administrator asks for the status. The
// daemon's VmRSS and thread count are read every 10 s and its live heap
// (after a collection) every minute. After a warm-up (a sixth of the run,
// at most five minutes) the resident set must stay flat: the median of
// the last fifth of the readings within 20% of the median of the first
// fifth after the warm-up. The readings are logged, and written to the
// file HSMEMU_SOAK_OUT names, for docs/reliability.md.
func TestSoak(t *testing.T) {
	chaosOnly(t)
	dur, err := time.ParseDuration(os.Getenv("HSMEMU_SOAK"))
	if err != nil || dur <= 0 {
		t.Skip("a soak: HSMEMU_SOAK=30m (make soak) says for how long")
	}
	// HSMEMU_SOAK_ARGS adds flags to the daemon's (--lock-memory off, say).
	d := newDaemon(t, "", strings.Fields(os.Getenv("HSMEMU_SOAK_ARGS"))...)
	d.profiled()
	d.start()
	slot := newToken(t, d.sock, "soak")
	t.Logf("daemon: hsmemu %s", strings.Join(d.args, " "))

	// A shared ECDSA key pair on the token.
	setup, err := dial(d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close()
	sh, err := setup.session(slot)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.do("C_GenerateKeyPair", wiretest.U(sh), wiretest.M(ck.CKM_EC_KEY_PAIR_GEN),
		wiretest.T(wiretest.A(ck.CKA_EC_PARAMS, ecP256), wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_VERIFY, true), wiretest.A(ck.CKA_LABEL, []byte("soak-ec"))),
		wiretest.T(wiretest.AB(ck.CKA_TOKEN, true), wiretest.AB(ck.CKA_SIGN, true), wiretest.A(ck.CKA_LABEL, []byte("soak-ec"))),
		wiretest.None(), wiretest.None()); err != nil {
		t.Fatal(err)
	}

	// Idle applications: 200 connections with 10 sessions each.
	for i := range 200 {
		c, err := dial(d.sock)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		defer c.Close()
		for range 10 {
			if _, err := c.do("C_OpenSession", wiretest.U(slot), wiretest.U(ck.CKF_SERIAL_SESSION), wiretest.None(), wiretest.None(), wiretest.None()); err != nil {
				t.Fatal(err)
			}
		}
	}

	var ops atomic.Int64
	stop := make(chan struct{})
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &soaker{id: w, sock: d.sock, slot: slot, rng: mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w))), ops: &ops}
			if err := s.run(stop); err != nil {
				errs <- fmt.Errorf("worker %d: %w", w, err)
			}
		}()
	}

	var samples []soakSample
	began := time.Now()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		s := soakSample{at: time.Since(began).Round(time.Second), rssKiB: d.rssKiB(), threads: d.threads(t), ops: ops.Load()}
		if i%6 == 0 {
			m, rss := d.mem(t)
			s.heapKiB, s.rssKiB = m.HeapAlloc>>10, rss
			s.sessions = d.status(t).Sessions
		}
		samples = append(samples, s)
		if s.at >= dur {
			break
		}
		select {
		case err := <-errs:
			close(stop)
			wg.Wait()
			t.Fatal(err)
		case <-tick.C:
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	var out strings.Builder
	fmt.Fprintln(&out, "elapsed  rss_kib  heap_kib  threads  ops  sessions")
	for _, s := range samples {
		fmt.Fprintf(&out, "%v %d %d %d %d %d\n", s.at, s.rssKiB, s.heapKiB, s.threads, s.ops, s.sessions)
	}
	t.Logf("readings:\n%s", out.String())
	if path := os.Getenv("HSMEMU_SOAK_OUT"); path != "" {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
	warm := min(dur/6, 5*time.Minute)
	var after []soakSample
	for _, s := range samples {
		if s.at >= warm {
			after = append(after, s)
		}
	}
	if len(after) < 10 {
		t.Fatalf("%d readings after the warm-up: too short a soak to judge", len(after))
	}
	fifth := len(after) / 5
	early, late := medianRSS(after[:fifth]), medianRSS(after[len(after)-fifth:])
	total := samples[len(samples)-1].ops
	t.Logf("%v, %d operations (%.0f/s); after a %v warm-up the median VmRSS went from %d KiB to %d KiB (%+.1f%%)",
		dur, total, float64(total)/dur.Seconds(), warm, early, late, 100*float64(late-early)/float64(early))
	if late > early*12/10 {
		t.Errorf("VmRSS grew by more than 20%% after the warm-up: %d KiB to %d KiB", early, late)
	}
}

func medianRSS(s []soakSample) int64 {
	v := make([]int64, len(s))
	for i := range s {
		v[i] = s[i].rssKiB
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// soaker is one busy application of the soak, which now and then comes
// back as another.
type soaker struct {
	id   int
	sock string
	slot uint64
	rng  *mrand.Rand
	ops  *atomic.Int64

	c      *conn
	h      uint64
	ec     uint64 // the shared ECDSA key's private half
	ecPub  uint64
	aes    uint64 // a session AES key
	objs   []*mine
	extra  []uint64 // sessions opened and not yet closed
	serial int
}

func (s *soaker) connect() error {
	if s.c != nil {
		s.c.Close()
	}
	c, err := dial(s.sock)
	if err != nil {
		return err
	}
	s.c, s.extra = c, nil
	if s.h, err = c.session(s.slot); err != nil {
		return err
	}
	priv, err := c.find(s.h, wiretest.AU(ck.CKA_CLASS, ck.CKO_PRIVATE_KEY), wiretest.A(ck.CKA_LABEL, []byte("soak-ec")))
	if err != nil || len(priv) != 1 {
		return fmt.Errorf("the ECDSA key: %v %v", priv, err)
	}
	pub, err := c.find(s.h, wiretest.AU(ck.CKA_CLASS, ck.CKO_PUBLIC_KEY), wiretest.A(ck.CKA_LABEL, []byte("soak-ec")))
	if err != nil || len(pub) != 1 {
		return fmt.Errorf("the ECDSA public key: %v %v", pub, err)
	}
	s.ec, s.ecPub = priv[0], pub[0]
	out, err := c.do("C_CreateObject", wiretest.U(s.h), wiretest.T(
		wiretest.AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY), wiretest.AU(ck.CKA_KEY_TYPE, ck.CKK_AES), wiretest.AB(ck.CKA_TOKEN, false),
		// Public: a logout destroys the application's private session
		// objects.
		wiretest.AB(ck.CKA_PRIVATE, false), wiretest.AB(ck.CKA_ENCRYPT, true), wiretest.AB(ck.CKA_DECRYPT, true), wiretest.A(ck.CKA_VALUE, bytes.Repeat([]byte{byte(s.id)}, 32))), wiretest.None())
	if err != nil {
		return err
	}
	s.aes = out[2].Ulong
	for _, o := range s.objs {
		o.handle = 0 // handles are per application
	}
	return nil
}

func (s *soaker) run(stop <-chan struct{}) error {
	defer func() {
		if s.c != nil {
			s.c.Close()
		}
	}()
	if err := s.connect(); err != nil {
		return err
	}
	w := &worker{id: s.id, led: &ledger{entries: map[string]*entry{}}, rng: s.rng, n: &workerCounts{}}
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		var err error
		w.objs = s.objs
		switch r := s.rng.IntN(100); {
		case r < 30 && len(w.objs) > 0:
			err = w.sign(s.c, s.h)
		case r < 45 && (len(w.objs) < maxObjs || r < 33):
			s.serial++
			err = w.create(s.c, s.h, fmt.Sprintf("soak-%d-%d", s.id, s.serial), s.rng.IntN(4) == 0)
			// The ledger is the kill test's; a soak keeps no history.
			clear(w.led.entries)
		case r < 55 && len(w.objs) > minObjs:
			err = w.destroy(s.c, s.h)
		case r < 65:
			err = s.ecdsa()
		case r < 75:
			err = s.gcm()
		case r < 82 && len(w.objs) > 0:
			o := w.objs[s.rng.IntN(len(w.objs))]
			if err = w.handle(s.c, s.h, o); err == nil {
				var v [][]byte
				v, err = s.c.get(s.h, o.handle, ck.CKA_LABEL, ck.CKA_VALUE, ck.CKA_KEY_TYPE)
				if err == nil && string(v[0]) != o.label {
					err = fmt.Errorf("%s reads as %q", o.label, v[0])
				}
			}
		case r < 90:
			err = s.sessions()
		case r < 95:
			if _, err = s.c.do("C_Logout", wiretest.U(s.h)); err == nil {
				_, err = s.c.do("C_Login", wiretest.U(s.h), wiretest.U(ck.CKU_USER), wiretest.S(wiretest.UserPIN))
			}
		case r < 97:
			_, err = s.c.find(s.h, wiretest.AU(ck.CKA_CLASS, ck.CKO_SECRET_KEY))
		default:
			if s.rng.IntN(10) == 0 {
				err = s.connect()
			}
		}
		s.objs = w.objs
		if err != nil {
			return err
		}
		s.ops.Add(1)
	}
}

// ecdsa signs a digest with the shared key and verifies it through the
// daemon.
func (s *soaker) ecdsa() error {
	digest := make([]byte, 32)
	rand.Read(digest)
	if _, err := s.c.do("C_SignInit", wiretest.U(s.h), wiretest.M(ck.CKM_ECDSA), wiretest.U(s.ec)); err != nil {
		return err
	}
	out, err := s.c.do("C_Sign", wiretest.U(s.h), wiretest.B(digest), wiretest.Out(64))
	if err != nil {
		return err
	}
	sig := bytes.Clone(out[2].Bytes)
	if _, err := s.c.do("C_VerifyInit", wiretest.U(s.h), wiretest.M(ck.CKM_ECDSA), wiretest.U(s.ecPub)); err != nil {
		return err
	}
	_, err = s.c.do("C_Verify", wiretest.U(s.h), wiretest.B(digest), wiretest.B(sig))
	return err
}

// gcm encrypts 1 KiB with AES-GCM and decrypts it back.
func (s *soaker) gcm() error {
	iv := make([]byte, 12)
	rand.Read(iv)
	plain := make([]byte, 1024)
	rand.Read(plain)
	mech := wiretest.MP(ck.CKM_AES_GCM, wire.GCMParams{IV: iv, IVBits: 96, TagBits: 128}.Param())
	if _, err := s.c.do("C_EncryptInit", wiretest.U(s.h), mech, wiretest.U(s.aes)); err != nil {
		return err
	}
	out, err := s.c.do("C_Encrypt", wiretest.U(s.h), wiretest.B(plain), wiretest.Out(2048))
	if err != nil {
		return err
	}
	ct := bytes.Clone(out[2].Bytes)
	if _, err := s.c.do("C_DecryptInit", wiretest.U(s.h), mech, wiretest.U(s.aes)); err != nil {
		return err
	}
	out, err = s.c.do("C_Decrypt", wiretest.U(s.h), wiretest.B(ct), wiretest.Out(2048))
	if err != nil {
		return err
	}
	if !hmac.Equal(out[2].Bytes, plain) {
		return fmt.Errorf("AES-GCM: decrypted another text")
	}
	return nil
}

// sessions opens a session, or closes one of those opened, keeping up
// to 50.
func (s *soaker) sessions() error {
	if len(s.extra) < 50 && s.rng.IntN(2) == 0 {
		out, err := s.c.do("C_OpenSession", wiretest.U(s.slot), wiretest.U(ck.CKF_SERIAL_SESSION), wiretest.None(), wiretest.None(), wiretest.None())
		if err != nil {
			return err
		}
		s.extra = append(s.extra, out[4].Ulong)
		return nil
	}
	if len(s.extra) == 0 {
		return nil
	}
	k := s.rng.IntN(len(s.extra))
	_, err := s.c.do("C_CloseSession", wiretest.U(s.extra[k]))
	s.extra = append(s.extra[:k], s.extra[k+1:]...)
	return err
}
