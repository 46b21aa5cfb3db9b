package token

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"hsmemu/cryptoki/ck"
	. "hsmemu/cryptoki/wire/wiretest"
	"hsmemu/keystore"
)

// Two daemons on one keystore database using one token key for
// generated IVs: each reservation reads and advances the stored mark
// under the row's lock (ivcounter.go), so they never hand out the same
// IV, whatever the interleaving, attribute changes of the key included.

var errLook = errors.New("only looking")

// storedIV is the key's stored counter state, read under the row's lock,
// past any Store's cache.
func storedIV(t *testing.T, s *keystore.Store, id keystore.ObjectID) ivState {
	t.Helper()
	var st ivState
	err := s.UpdateLocked(context.Background(), id, func(cur *keystore.Object) (keystore.Attributes, []byte, error) {
		var err error
		if st, err = ivStateOf(cur.Attrs); err != nil {
			return nil, nil, err
		}
		return nil, nil, errLook
	})
	if !errors.Is(err, errLook) {
		t.Fatal(err)
	}
	return st
}

func TestIVCounterSharedDaemons(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d1 := startEngine(t, Config{})
	d1.eng.ivBlock = 4 // many reservations, each a chance to overlap
	cl := d1.dial(t)
	h := cl.Open(cl.NewToken("shared"), true)
	cl.Must(ck.CKR_OK, "C_Login", U(h), U(ck.CKU_USER), S(UserPIN))
	key := aesKey(cl, h, true)

	d2 := &testEngine{db: d1.db}
	d2.start(t, Config{})
	t.Cleanup(d2.stop)
	d2.eng.ivBlock = 4
	cl2 := d2.dial(t)
	h2 := cl2.Open(cl2.Slots()[0], true)
	cl2.Must(ck.CKR_OK, "C_Login", U(h2), U(ck.CKU_USER), S(UserPIN))
	key2 := cl2.Find(h2, A(ck.CKA_LABEL, []byte("k")))[0]

	tokens, err := d1.store.Tokens(ctx)
	if err != nil || len(tokens) != 1 {
		t.Fatalf("tokens: %v %v", tokens, err)
	}
	ids, err := d1.store.Find(ctx, tokens[0].UUID, keystore.Filter{IncludePrivate: true})
	if err != nil || len(ids) != 1 {
		t.Fatalf("the key: %v %v", ids, err)
	}
	id := ids[0]
	c1, err := d1.eng.ivCounterOf(ctx, nil, &handle{id: id}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := d2.eng.ivCounterOf(ctx, nil, &handle{id: id}, nil)
	if err != nil {
		t.Fatal(err)
	}

	// A change of the key's attributes on one daemon keeps the mark
	// the other wrote since this one last read the key.
	if _, err := c1.take(ctx); err != nil {
		t.Fatal(err)
	}
	// The first daemon reads the key (into its Store's cache, which on
	// SQLite nothing tells of the other's writes); the second then
	// reserves.
	if _, err := d1.store.Open(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.take(ctx); err != nil {
		t.Fatal(err)
	}
	before := storedIV(t, d1.store, id)
	cl.Must(ck.CKR_OK, "C_SetAttributeValue", U(h), U(key), T(A(ck.CKA_LABEL, []byte("k"))))
	if after := storedIV(t, d1.store, id); after != before {
		t.Fatalf("C_SetAttributeValue wrote the counter back from %+v to %+v", before, after)
	}

	var mu sync.Mutex
	seen := map[uint64]string{}
	note := func(v uint64, who string) error {
		mu.Lock()
		defer mu.Unlock()
		if w, ok := seen[v]; ok {
			return fmt.Errorf("IV %d handed out by %s and by %s", v, w, who)
		}
		seen[v] = who
		return nil
	}
	const workers, each, calls = 4, 150, 40
	errs := make(chan error, 2*workers+2)
	var wg sync.WaitGroup
	for d, c := range []*ivCounter{c1, c2} {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func(who string) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					v, err := c.take(ctx)
					if err == nil {
						err = note(v, who)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}(fmt.Sprintf("daemon %d worker %d", d+1, w))
		}
	}
	wg.Add(2)
	go func() {
		// The key renamed on the first daemon throughout.
		defer wg.Done()
		for i := 0; i < calls; i++ {
			if rv, _ := cl.Call("C_SetAttributeValue", U(h), U(key), T(A(ck.CKA_LABEL, fmt.Appendf(nil, "k%d", i)))); rv != ck.CKR_OK {
				errs <- fmt.Errorf("C_SetAttributeValue: %v", ck.Error(rv))
				return
			}
		}
	}()
	go func() {
		// Messages encrypted through the second daemon throughout.
		defer wg.Done()
		if rv, _ := cl2.Call("C_MessageEncryptInit", U(h2), M(ck.CKM_AES_GCM), U(key2)); rv != ck.CKR_OK {
			errs <- fmt.Errorf("C_MessageEncryptInit: %v", ck.Error(rv))
			return
		}
		for i := 0; i < calls; i++ {
			rv, out := cl2.Call("C_EncryptMessage", U(h2), gcmMsg(make([]byte, 12), 32, ck.CKG_GENERATE_COUNTER, 16), S(""), S("x"), Out(256))
			if rv != ck.CKR_OK {
				errs <- fmt.Errorf("C_EncryptMessage: %v", ck.Error(rv))
				return
			}
			if err := note(binary.BigEndian.Uint64(written(out[1], "pIv")[4:]), "the client"); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if want := 2*workers*each + calls; len(seen) != want {
		t.Fatalf("%d IVs, want %d", len(seen), want)
	}
	// Every value handed out is below the stored mark: a restart of
	// either daemon goes on past all of them.
	st := storedIV(t, d2.store, id)
	for v := range seen {
		if v >= st.mark {
			t.Fatalf("IV %d handed out, the stored mark is %d", v, st.mark)
		}
	}
}
