package bench

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"hsmemu/cryptoki/ck"

	"github.com/miekg/pkcs11"
)

// offered fakes C_GetMechanismInfo from a table of mechanism flags.
func offered(table map[uint]uint) func(uint) (uint, bool) {
	return func(m uint) (uint, bool) {
		f, ok := table[m]
		return f, ok
	}
}

func opNamed(t *testing.T, name string) *op {
	for i := range ops {
		if ops[i].name == name {
			return &ops[i]
		}
	}
	t.Fatalf("no op %q", name)
	return nil
}

func TestCheckOpChoosesFirstOffered(t *testing.T) {
	wrap := opNamed(t, "wrap")
	gen := map[uint]uint{pkcs11.CKM_AES_KEY_GEN: pkcs11.CKF_GENERATE}
	cases := []struct {
		name   string
		table  map[uint]uint
		chosen uint
		why    string
	}{
		{name: "KWP first", table: map[uint]uint{ckmKWP: pkcs11.CKF_WRAP, ckmKWPad: pkcs11.CKF_WRAP, ckmKW: pkcs11.CKF_WRAP}, chosen: ckmKWP, why: ""},
		{name: "the older name", table: map[uint]uint{ckmKWPad: pkcs11.CKF_WRAP, ckmKW: pkcs11.CKF_WRAP}, chosen: ckmKWPad, why: ""},
		{name: "plain KW last", table: map[uint]uint{ckmKW: pkcs11.CKF_WRAP | pkcs11.CKF_UNWRAP}, chosen: ckmKW, why: ""},
		{name: "offered without the wrap flag", table: map[uint]uint{ckmKWP: pkcs11.CKF_ENCRYPT}, chosen: 0, why: "offers none of CKM_AES_KEY_WRAP_KWP"},
		{name: "none", table: map[uint]uint{}, chosen: 0, why: "offers none of"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tbl := map[uint]uint{}
			for k, v := range gen {
				tbl[k] = v
			}
			for k, v := range c.table {
				tbl[k] = v
			}
			chosen, why := checkOp(wrap, offered(tbl))
			if chosen != c.chosen || !strings.Contains(why, c.why) || (c.why == "") != (why == "") {
				t.Fatalf("checkOp = %#x, %q; want %#x, %q", chosen, why, c.chosen, c.why)
			}
		})
	}
}

func TestCheckOpNeeds(t *testing.T) {
	ed := opNamed(t, "sign-ed25519")
	if _, why := checkOp(ed, offered(map[uint]uint{ckmEdGen: pkcs11.CKF_GENERATE_KEY_PAIR})); !strings.Contains(why, "CKM_EDDSA for sign") {
		t.Fatalf("missing CKM_EDDSA: %q", why)
	}
	if _, why := checkOp(ed, offered(map[uint]uint{ckmEdGen: pkcs11.CKF_GENERATE_KEY_PAIR, ckmEdDSA: pkcs11.CKF_VERIFY})); why == "" {
		t.Fatal("CKM_EDDSA without CKF_SIGN accepted")
	}
	if _, why := checkOp(ed, offered(map[uint]uint{ckmEdGen: pkcs11.CKF_GENERATE_KEY_PAIR, ckmEdDSA: pkcs11.CKF_SIGN | pkcs11.CKF_VERIFY})); why != "" {
		t.Fatalf("refused: %q", why)
	}
	// An op with no mechanism needs runs anywhere.
	if _, why := checkOp(opNamed(t, "random-32"), offered(nil)); why != "" {
		t.Fatalf("random-32 refused: %q", why)
	}
}

func TestTurnRotates(t *testing.T) {
	firsts := map[int]bool{}
	for run := range 3 {
		order := turn(3, run)
		sorted := slices.Sorted(slices.Values(order))
		if !slices.Equal(sorted, []int{0, 1, 2}) {
			t.Fatalf("run %d order %v is not every module once", run, order)
		}
		firsts[order[0]] = true
	}
	if len(firsts) != 3 {
		t.Fatalf("over 3 runs, %d different modules went first; want 3", len(firsts))
	}
}

func TestOptionsDefaults(t *testing.T) {
	o := Options{Modules: []string{"x.so"}}
	if err := o.defaults(); err != nil {
		t.Fatal(err)
	}
	if o.Token == "" || o.Duration != 2*time.Second || o.Runs != 1 || !slices.Equal(o.Concurrency, []int{1}) {
		t.Fatalf("defaults: %+v", o)
	}
	for _, bad := range []Options{
		{},
		{Modules: []string{"x.so"}, Concurrency: []int{0}},
		{Modules: []string{"x.so"}, Ops: []string{"teleport"}},
		{Modules: []string{"x.so"}, Objects: -1},
	} {
		if err := bad.defaults(); err == nil {
			t.Fatalf("accepted %+v", bad)
		}
	}
}

// Every op is described and named once; login runs last, after the ops
// whose keys it would otherwise leave logged out.
func TestOpsTable(t *testing.T) {
	seen := map[string]bool{}
	for _, o := range ops {
		if o.what == "" || o.prepare == nil || seen[o.name] {
			t.Fatalf("op %q: described %v, prepared %v, repeated %v", o.name, o.what != "", o.prepare != nil, seen[o.name])
		}
		seen[o.name] = true
	}
	if ops[len(ops)-1].name != "login" {
		t.Fatal("login is not the last op")
	}
	if len(ops) != 18 {
		t.Fatalf("%d ops, want the 18 the harness promises", len(ops))
	}
}

// A module that says it does not do something is unsupported; one that
// fails at it is not.
func TestRefusal(t *testing.T) {
	for _, code := range []uint{pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_CURVE_NOT_SUPPORTED} {
		if !refusal(ck.Error(code)) {
			t.Errorf("%#x is not a refusal", code)
		}
	}
	for _, code := range []uint{pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_OBJECT_HANDLE_INVALID} {
		if refusal(ck.Error(code)) {
			t.Errorf("%#x is a refusal", code)
		}
	}
}

func TestParseModuleSpec(t *testing.T) {
	t.Parallel()
	odd := filepath.Join(t.TempDir(), "mod@v1.so") // a real file with an '@'
	if err := os.WriteFile(odd, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		spec, path, socket string
		bad                bool
	}{
		{spec: "bin/hsmemu-pkcs11.so", path: "bin/hsmemu-pkcs11.so"},
		{spec: "old.so@/tmp/old.sock", path: "old.so", socket: "/tmp/old.sock"},
		{spec: odd, path: odd},
		{spec: odd + "@/tmp/s", path: odd, socket: "/tmp/s"},
		{spec: "old.so@", bad: true},
		{spec: "@/tmp/s", bad: true},
	} {
		path, socket, err := parseModuleSpec(c.spec)
		if (err != nil) != c.bad || path != c.path || socket != c.socket {
			t.Errorf("parseModuleSpec(%q) = %q, %q, %v", c.spec, path, socket, err)
		}
	}
}

// TestTimeOpYieldsInTheWindow: a worker's active time is its whole
// window, the time it spent yielding included. With the yields left out,
// eight CPU-bound workers on two Ps each reported a fraction of the
// window, and the cell, summing their rates, about four times what they
// did. (Comparing the summed rates with the wall time instead failed on
// a loaded machine, where the workers start their windows apart.)
func TestTimeOpYieldsInTheWindow(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	const workers, d = 8, 100 * time.Millisecond
	ph := newPhase(workers)
	spin := worker{do: func(session) (bool, error) {
		for end := time.Now().Add(20 * time.Microsecond); time.Now().Before(end); {
		}
		return false, nil
	}}
	type res struct {
		n      uint64
		active time.Duration
		err    error
	}
	out := make(chan res, workers)
	for range workers {
		go func() {
			n, active, err := timeOp(ph, spin, 0, d, nil)
			out <- res{n, active, err}
		}()
	}
	for range workers {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.n < 64 {
			t.Skipf("%d ops in the window: too few to yield", r.n)
		}
		if r.active < d {
			t.Errorf("a worker's active time %v is shorter than its window %v: yields left out of the window", r.active, d)
		}
	}
}
