package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Options is what `hsmemu bench` was asked.
type Options struct {
	Modules []string // module paths; the first is the ratio's baseline
	// Labels, where one is given, follow the module of the same index in
	// the report: "hsmemu-pkcs11.so (postgres)".
	Labels      []string
	Token       string // token label
	PIN, SOPIN  string
	Setup       bool // create the token where it is missing and the module can
	Ops         []string
	Concurrency []int
	Duration    time.Duration // measuring window of each cell in each run
	Warmup      time.Duration // unmeasured calls before each window
	Runs        int
	Objects     int // token objects find searches among
	// Conventions are the ways the ops with an output buffer make that
	// call, each measured (OneCall, TwoCall; default TwoCall, the common
	// case).
	Conventions []string
	// SessionKeys: the ops' keys are session objects, not token objects.
	SessionKeys bool
	Progress    io.Writer // a terminal, or nil
}

// OpNames lists the operations in the order they run.
func OpNames() []string {
	var names []string
	for _, o := range ops {
		names = append(names, o.name)
	}
	return names
}

// OutputOps lists the operations with an output buffer, which are measured
// in each calling convention asked (Options.Conventions).
func OutputOps() []string {
	var names []string
	for _, o := range ops {
		if o.output {
			names = append(names, o.name)
		}
	}
	return names
}

// OpDescriptions maps each operation to what it measures.
func OpDescriptions() map[string]string {
	d := map[string]string{}
	for _, o := range ops {
		d[o.name] = o.what
	}
	return d
}

func (o *Options) defaults() error {
	if len(o.Modules) == 0 {
		return errors.New("no module: name one or more with --module")
	}
	if o.Token == "" {
		o.Token = "hsmemu-bench"
	}
	if len(o.Token) > 32 || strings.TrimRight(o.Token, " ") != o.Token {
		return fmt.Errorf("token label %q: at most 32 bytes, no trailing spaces (CK_TOKEN_INFO's label field)", o.Token)
	}
	if len(o.Concurrency) == 0 {
		o.Concurrency = []int{1}
	}
	for _, c := range o.Concurrency {
		if c < 1 || c > 256 {
			return fmt.Errorf("concurrency %d: must be 1 to 256", c)
		}
	}
	if o.Duration <= 0 {
		o.Duration = 2 * time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Runs < 1 {
		o.Runs = 1
	}
	if o.Objects < 0 {
		return errors.New("--find-among must not be negative")
	}
	if len(o.Conventions) == 0 {
		o.Conventions = []string{TwoCall}
	}
	for _, c := range o.Conventions {
		if c != OneCall && c != TwoCall {
			return fmt.Errorf("convention %q: %s or %s", c, TwoCall, OneCall)
		}
	}
	for _, name := range o.Ops {
		if !slices.Contains(OpNames(), name) {
			return fmt.Errorf("unknown op %q: the ops are %s", name, strings.Join(OpNames(), ", "))
		}
	}
	return nil
}

// target is one module ready to measure: its sessions (all logged in, as
// login belongs to the application) and the ops prepared on it.
type target struct {
	m        *module
	name     string
	sessions []session
	prepared map[string]*prepared
	mechs    map[string]uint   // the mechanism each op chose
	missing  map[string]string // why an op is unsupported
	broken   map[string]string // why an op failed before measuring
}

// Run measures every op on every module at every concurrency, interleaved:
// within a run, each op and concurrency is measured on each module in turn
// (the order rotating from run to run), so the modules share the machine's
// mood and the ratios hold on a noisy machine.
func Run(ctx context.Context, opt Options) (*Report, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	host, _ := os.Hostname()
	rep := &Report{Started: time.Now().UTC(), Host: host, CPUs: runtime.NumCPU(), Duration: opt.Duration,
		Runs: opt.Runs, Concurrency: opt.Concurrency, Conventions: opt.Conventions, Keys: "token"}
	if opt.SessionKeys {
		rep.Keys = "session"
	}
	// An op with an output buffer is measured in each convention asked.
	var sel []*op
	for i := range ops {
		if len(opt.Ops) != 0 && !slices.Contains(opt.Ops, ops[i].name) {
			continue
		}
		if !ops[i].output {
			sel = append(sel, &ops[i])
			continue
		}
		for _, c := range opt.Conventions {
			o := ops[i]
			o.conv = c
			if c == TwoCall {
				o.calls++
			}
			sel = append(sel, &o)
		}
	}
	maxConc := slices.Max(opt.Concurrency)
	var targets []*target
	defer func() {
		for _, t := range targets {
			t.release()
		}
	}()
	names := map[string]int{}
	for i, path := range opt.Modules {
		t, notes, err := openTarget(path, opt, maxConc, sel)
		if err != nil {
			return nil, err
		}
		// Two modules of the same file name are told apart by a number.
		base := t.m.name
		if t.m.remote {
			base += " (tls)"
		}
		if t.m.transport != "" {
			base += " (" + t.m.transport + ")"
		}
		if i < len(opt.Labels) && opt.Labels[i] != "" {
			base += " (" + opt.Labels[i] + ")"
		}
		names[base]++
		t.name = base
		if names[base] > 1 {
			t.name = fmt.Sprintf("%s#%d", base, names[base])
		}
		for i := range notes {
			notes[i].Module = t.name
		}
		rep.Setup = append(rep.Setup, notes...)
		targets = append(targets, t)
		rep.Modules = append(rep.Modules, t.name)
	}

	calls := map[string]int{}
	for _, o := range sel {
		calls[o.id()] = o.calls
	}
	results := map[string]*Result{}
	key := func(op, mod string, c int) string { return fmt.Sprintf("%s\x00%s\x00%d", op, mod, c) }
	for _, o := range sel {
		for _, c := range opt.Concurrency {
			for _, t := range targets {
				r := &Result{Op: o.name, Convention: o.conv, Module: t.name, ModulePath: t.m.path, Concurrency: c, Status: "ok", Remote: t.m.remote,
					overSocket: t.m.overSocket()}
				switch {
				case o.single && c > 1:
					r.Status, r.Reason = "unsupported", "login state belongs to the application, so login runs at concurrency 1 only"
				case t.missing[o.name] != "":
					r.Status, r.Reason = "unsupported", t.missing[o.name]
				case t.broken[o.name] != "":
					r.Status, r.Reason = "failed", t.broken[o.name]
				}
				if m, ok := t.mechs[o.name]; ok {
					r.Mechanism = mechName(m)
				}
				results[key(o.id(), t.name, c)] = r
			}
		}
	}
	prog := newProgress(opt.Progress, opt.Runs*len(sel)*len(opt.Concurrency)*len(targets))
	defer prog.finish()
	// The ops that log out run after all the others, every run of them,
	// once the others' keys are gone: some modules give private objects new
	// handles after a new login.
	var first, last []*op
	for _, o := range sel {
		if o.logsOut {
			last = append(last, o)
		} else {
			first = append(first, o)
		}
	}
	floor, err := startFloor()
	if err != nil {
		return nil, err
	}
	defer floor.close()
	rep.Floor = &Result{Op: "socket-roundtrip", Module: "(bare Unix socket)", Concurrency: 1, Status: "ok"}
	ringFloor, err := startRingFloor()
	if err != nil {
		return nil, err
	}
	defer ringFloor.close()
	rep.RingFloor = &Result{Op: "ring-roundtrip", Module: "(bare shared-memory rings)", Concurrency: 1, Status: "ok"}
	// With a module that reaches its daemon over TLS, the TLS floor too.
	var tlsFloor *floorProbe
	for _, t := range targets {
		if t.m.remote && tlsFloor == nil {
			if tlsFloor, err = startTLSFloor(); err != nil {
				return nil, err
			}
			defer tlsFloor.close()
			rep.TLSFloor = &Result{Op: "tls-roundtrip", Module: "(bare TLS 1.3 over loopback TCP)", Concurrency: 1, Status: "ok"}
		}
	}
	bare := startBare(sel)
	for g, group := range [][]*op{first, last} {
		for run := 0; run < opt.Runs; run++ {
			if g == 0 {
				cell, err := floor.measure(opt)
				if err != nil {
					rep.Floor.Status, rep.Floor.Reason = "failed", err.Error()
				} else {
					rep.Floor.addCell(cell)
				}
				if cell, err := ringFloor.measure(opt); err != nil {
					rep.RingFloor.Status, rep.RingFloor.Reason = "failed", err.Error()
				} else {
					rep.RingFloor.addCell(cell)
				}
				if tlsFloor != nil {
					cell, err := tlsFloor.measure(opt)
					if err != nil {
						rep.TLSFloor.Status, rep.TLSFloor.Reason = "failed", err.Error()
					} else {
						rep.TLSFloor.addCell(cell)
					}
				}
				for _, b := range bare {
					b.measure(opt)
				}
			}
			for _, o := range group {
				for _, c := range opt.Concurrency {
					for _, i := range turn(len(targets), run) {
						t := targets[i]
						r := results[key(o.id(), t.name, c)]
						prog.step(fmt.Sprintf("run %d/%d  %s  c=%d  %s", run+1, opt.Runs, o.id(), c, t.name))
						if err := ctx.Err(); err != nil {
							return nil, err
						}
						if r.Status != "ok" {
							continue
						}
						cell, err := t.measure(o, c, opt)
						var unsup errUnsupported
						switch {
						case errors.As(err, &unsup):
							r.Status, r.Reason = "unsupported", unsup.Error()
						case is(err, pkcs11.CKR_FUNCTION_NOT_SUPPORTED) || is(err, pkcs11.CKR_MECHANISM_INVALID):
							// Offered in C_GetMechanismInfo, refused when used.
							r.Status, r.Reason = "unsupported", "refused when measured: "+err.Error()
						case err != nil:
							r.Status, r.Reason = "failed", err.Error()
						default:
							r.addCell(cell)
						}
					}
				}
			}
		}
		for _, t := range targets {
			t.releaseKeys()
		}
	}
	for _, o := range sel {
		for _, c := range opt.Concurrency {
			for _, t := range targets {
				r := results[key(o.id(), t.name, c)]
				summarize(r)
				rep.Results = append(rep.Results, *r)
			}
		}
	}
	setRatios(rep.Results, rep.Modules[0])
	summarize(rep.Floor)
	summarize(rep.RingFloor)
	setFloorRatios(rep.Results, rep.Floor, calls, floorSocket)
	setFloorRatios(rep.Results, rep.RingFloor, calls, floorRing)
	if rep.TLSFloor != nil {
		summarize(rep.TLSFloor)
		setFloorRatios(rep.Results, rep.TLSFloor, calls, floorTLS)
		setTLSRatios(rep.Results, rep.Floor, rep.TLSFloor, calls)
	}
	for _, b := range bare {
		summarize(b.res)
		rep.Bare = append(rep.Bare, *b.res)
	}
	setBareRatios(rep.Results, rep.Bare, rep.Floor)
	return rep, nil
}

// setTLSRatios relates each op's p50 through TLS, at concurrency 1, to
// what the same module's p50 through the socket predicts: that, plus the
// difference of the two floors for each call the op makes.
func setTLSRatios(results []Result, floor, tlsFloor *Result, calls map[string]int) {
	if floor.Status != "ok" || tlsFloor.Status != "ok" {
		return
	}
	gap := float64(tlsFloor.P50) - float64(floor.P50)
	for i := range results {
		r := &results[i]
		if !r.Remote || r.Concurrency != 1 || r.Status != "ok" {
			continue
		}
		for _, u := range results {
			if u.id() == r.id() && u.ModulePath == r.ModulePath && !u.Remote && u.Concurrency == 1 && u.Status == "ok" && u.P50 > 0 {
				if want := float64(u.P50) + float64(calls[r.id()])*gap; want > 0 {
					r.TLSRatio = float64(r.P50) / want
				}
			}
		}
	}
}

// The floors a module's calls are related to.
const (
	floorSocket = iota // the module's transport is the socket
	floorRing          // the rings, the module's default
	floorTLS           // a daemon over TLS
)

// floorOf is the floor of r's module's transport.
func floorOf(r *Result) int {
	switch {
	case r.Remote:
		return floorTLS
	case r.overSocket:
		return floorSocket
	}
	return floorRing
}

// setFloorRatios relates each op's p50 at concurrency 1 to as many bare
// round trips as the op makes calls, over the transport of the floor
// given: a module is related to its own transport's floor (floorOf).
func setFloorRatios(results []Result, floor *Result, calls map[string]int, which int) {
	if floor == nil || floor.Status != "ok" || floor.P50 <= 0 {
		return
	}
	for i := range results {
		r := &results[i]
		if r.Status == "ok" && r.Concurrency == 1 && calls[r.id()] > 0 && floorOf(r) == which {
			r.FloorRatio = float64(r.P50) / (float64(calls[r.id()]) * float64(floor.P50))
		}
	}
}

// floorProbe is the bare round trip, to this binary re-executed as an echo
// server (echo.go).
type floorProbe struct {
	dir string
	c   interface {
		roundTrips(n int, req, rep []byte) error
		Close() error
	}
}

func startFloor() (*floorProbe, error) {
	dir, err := os.MkdirTemp("", "hsb")
	if err != nil {
		return nil, err
	}
	c, err := startEcho(filepath.Join(dir, "s"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bare socket round trip: %w", err)
	}
	return &floorProbe{dir: dir, c: c}, nil
}

// startRingFloor is the ring floor (echoring.go).
func startRingFloor() (*floorProbe, error) {
	dir, err := os.MkdirTemp("", "hsb")
	if err != nil {
		return nil, err
	}
	c, err := startEchoRing(filepath.Join(dir, "s"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("bare ring round trip: %w", err)
	}
	return &floorProbe{dir: dir, c: c}, nil
}

// startTLSFloor is the TLS floor (echotls.go).
func startTLSFloor() (*floorProbe, error) {
	c, err := startEchoTLS()
	if err != nil {
		return nil, fmt.Errorf("bare TLS round trip: %w", err)
	}
	return &floorProbe{c: c}, nil
}

func (f *floorProbe) close() {
	f.c.Close()
	if f.dir != "" {
		os.RemoveAll(f.dir)
	}
}

// measure times single round trips for the warm-up and the window, the
// way a worker times a module's calls (timeOp).
func (f *floorProbe) measure(opt Options) (Cell, error) {
	req, rep := make([]byte, echoRequest), make([]byte, echoReply)
	w := worker{do: func(session) (bool, error) { return false, f.c.roundTrips(1, req, rep) }}
	if _, _, err := timeOp(newPhase(1), w, 0, opt.Warmup, nil); err != nil {
		return Cell{}, err
	}
	h := NewHistogram()
	n, active, err := timeOp(newPhase(1), w, 0, opt.Duration, h)
	if err != nil {
		return Cell{}, err
	}
	return Cell{Ops: n, Active: active, OpsPerS: float64(n) / active.Seconds(), Latency: h}, nil
}

// openTarget loads a module, finds (or with Setup creates) the token, logs
// in, opens the sessions, checks which ops the module offers and populates
// the objects for find.
func openTarget(path string, opt Options, nSessions int, sel []*op) (*target, []SetupNote, error) {
	m, err := loadModule(path)
	if err != nil {
		return nil, nil, err
	}
	t := &target{m: m, prepared: map[string]*prepared{}, mechs: map[string]uint{}, missing: map[string]string{}, broken: map[string]string{}}
	fail := func(err error) (*target, []SetupNote, error) {
		t.release()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	var notes []SetupNote
	slot, found, err := findToken(m, opt.Token)
	if err != nil {
		return fail(err)
	}
	if !found {
		if !opt.Setup {
			return fail(fmt.Errorf("no token labelled %q; create it, or pass --setup to let the harness create it", opt.Token))
		}
		start := time.Now()
		if slot, err = setupToken(m, opt); err != nil {
			return fail(err)
		}
		notes = append(notes, SetupNote{What: fmt.Sprintf("created token %q", opt.Token), Took: Micros(time.Since(start))})
	}
	m.slot = slot
	for i := 0; i < nSessions; i++ {
		s, err := m.open()
		if err != nil {
			return fail(err)
		}
		t.sessions = append(t.sessions, s)
	}
	if err := m.login(t.sessions[0], pkcs11.CKU_USER, opt.PIN); err != nil && !is(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		return fail(fmt.Errorf("C_Login: %w", err))
	}
	// Keys an earlier run could not destroy (it was killed, say) go now.
	for _, label := range [][]byte{keyLabel, generateLabel} {
		lt := newTemplate(bytesAttr(pkcs11.CKA_LABEL, label))
		left, err := m.findAll(t.sessions[0], lt)
		lt.free()
		if err == nil {
			for _, o := range left {
				m.destroy(t.sessions[0], o)
			}
			if len(left) > 0 {
				notes = append(notes, SetupNote{What: fmt.Sprintf("removed %d keys an earlier run left (%s)", len(left), label)})
			}
		}
	}
	for _, o := range sel {
		if mech, why := checkOp(o, m.mechFlags); why != "" {
			t.missing[o.name] = why
		} else if len(o.choose) > 0 {
			t.mechs[o.name] = mech
		}
		if o.name == "find" && opt.Objects > 0 {
			start := time.Now()
			made, err := populateFind(m, t.sessions[0], opt.Objects)
			switch {
			case err != nil && refusal(err):
				t.missing[o.name] = "the module does not create the data objects find searches among: " + err.Error()
			case err != nil:
				t.broken[o.name] = err.Error()
			case made:
				notes = append(notes, SetupNote{What: fmt.Sprintf("populated %d objects for find", opt.Objects), Took: Micros(time.Since(start))})
			}
		}
	}
	return t, notes, nil
}

// checkOp says which of the op's alternative mechanisms a module offers
// (the first), or why the module cannot run the op, from what
// C_GetMechanismInfo reports.
func checkOp(o *op, offered func(mech uint) (flags uint, ok bool)) (chosen uint, missing string) {
	for _, need := range o.needs {
		if flags, ok := offered(need.mech); !ok || flags&need.flag == 0 {
			return 0, fmt.Sprintf("the module does not offer %s", describeNeed(need))
		}
	}
	if len(o.choose) == 0 {
		return 0, ""
	}
	var alts []string
	for _, c := range o.choose {
		if flags, ok := offered(c.mech); ok && flags&c.flag != 0 {
			return c.mech, ""
		}
		alts = append(alts, mechName(c.mech))
	}
	return 0, "the module offers none of " + strings.Join(alts, ", ")
}

// turn is the order in which run number run measures the modules: each
// run starts one further along, so no module always goes first (right
// after another's warm caches, or right after the machine was idle).
func turn(n, run int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = (i + run) % n
	}
	return order
}

func describeNeed(n mechNeed) string {
	use := map[uint]string{pkcs11.CKF_WRAP: "wrap", pkcs11.CKF_UNWRAP: "unwrap", pkcs11.CKF_SIGN: "sign",
		pkcs11.CKF_VERIFY: "verify", pkcs11.CKF_ENCRYPT: "encrypt", pkcs11.CKF_DIGEST: "digest",
		pkcs11.CKF_GENERATE: "generate", pkcs11.CKF_GENERATE_KEY_PAIR: "generate key pair"}[n.flag]
	name := mechName(n.mech)
	if s, ok := knownMechs[n.mech]; ok {
		name = s
	}
	return fmt.Sprintf("%s for %s", name, use)
}

var knownMechs = map[uint]string{
	pkcs11.CKM_AES_KEY_GEN: "CKM_AES_KEY_GEN", pkcs11.CKM_EC_KEY_PAIR_GEN: "CKM_EC_KEY_PAIR_GEN",
	pkcs11.CKM_ECDSA: "CKM_ECDSA", pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN: "CKM_RSA_PKCS_KEY_PAIR_GEN",
	pkcs11.CKM_SHA256_RSA_PKCS: "CKM_SHA256_RSA_PKCS", ckmEdGen: "CKM_EC_EDWARDS_KEY_PAIR_GEN", ckmEdDSA: "CKM_EDDSA",
	pkcs11.CKM_AES_GCM: "CKM_AES_GCM", pkcs11.CKM_GENERIC_SECRET_KEY_GEN: "CKM_GENERIC_SECRET_KEY_GEN",
	pkcs11.CKM_SHA256_HMAC: "CKM_SHA256_HMAC", ckmSHA256: "CKM_SHA256",
}

func findToken(m *module, label string) (slotID, bool, error) {
	slots, err := m.slots()
	if err != nil {
		return 0, false, err
	}
	for _, s := range slots {
		if s.initialized && s.label == label {
			return s.id, true, nil
		}
	}
	return 0, false, nil
}

// setupToken initialises the first free token as the bench token and sets
// its user PIN.
func setupToken(m *module, opt Options) (slotID, error) {
	slots, err := m.slots()
	if err != nil {
		return 0, err
	}
	free := -1
	for i, s := range slots {
		if s.present && !s.initialized {
			free = i
			break
		}
	}
	if free < 0 {
		return 0, errors.New("--setup: no uninitialised token to create the bench token in")
	}
	if err := m.initToken(slots[free].id, opt.SOPIN, opt.Token); err != nil {
		if is(err, pkcs11.CKR_FUNCTION_NOT_SUPPORTED) {
			return 0, errors.New("--setup: the module cannot create tokens (C_InitToken is not supported); create the token with the module's own tool")
		}
		return 0, fmt.Errorf("--setup: C_InitToken: %w", err)
	}
	// Some modules give the new token a new slot.
	slot, found, err := findToken(m, opt.Token)
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, errors.New("--setup: the token made by C_InitToken does not show in the slot list")
	}
	m.slot = slot
	s, err := m.open()
	if err != nil {
		return 0, err
	}
	defer m.closeSession(s)
	if err := m.login(s, pkcs11.CKU_SO, opt.SOPIN); err != nil {
		return 0, fmt.Errorf("--setup: C_Login as SO: %w", err)
	}
	defer m.logout(s)
	if err := m.initPIN(s, opt.PIN); err != nil {
		return 0, fmt.Errorf("--setup: C_InitPIN: %w", err)
	}
	return slot, nil
}

// releaseKeys destroys what the ops prepared.
func (t *target) releaseKeys() {
	for name, p := range t.prepared {
		p.cleanup()
		delete(t.prepared, name)
	}
}

func (t *target) release() {
	t.releaseKeys()
	for _, s := range t.sessions {
		t.m.closeSession(s)
	}
	t.sessions = nil
	t.m.close()
}

// refusal reports a return code by which a module says it does not do
// something (as opposed to failing at it).
func refusal(err error) bool {
	for _, code := range []uint{pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT, pkcs11.CKR_CURVE_NOT_SUPPORTED,
		pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_ATTRIBUTE_TYPE_INVALID} {
		if is(err, code) {
			return true
		}
	}
	return false
}

// prepare makes an op ready on this module once.
func (t *target) prepare(o *op, opt Options) (*prepared, error) {
	if p, ok := t.prepared[o.id()]; ok {
		return p, nil
	}
	p, err := o.prepare(&opEnv{m: t.m, s: t.sessions[0], mech: t.mechs[o.name], pin: opt.PIN, objects: opt.Objects,
		twoCall: o.conv == TwoCall, session: opt.SessionKeys})
	if err != nil {
		var unsup errUnsupported
		if errors.As(err, &unsup) {
			return nil, err
		}
		if refusal(err) {
			return nil, errUnsupported("preparing: " + err.Error())
		}
		return nil, fmt.Errorf("preparing: %w", err)
	}
	t.prepared[o.id()] = p
	return p, nil
}

// measure runs one cell: c workers, each in its own session, first for the
// warm-up and then for the window. Each worker's clock stops while it
// tidies up (destroying the keys unwrap made).
func (t *target) measure(o *op, c int, opt Options) (Cell, error) {
	p, err := t.prepare(o, opt)
	if err != nil {
		return Cell{}, err
	}
	if o.logsOut {
		defer func() {
			// Log back in for the other ops.
			t.m.login(t.sessions[0], pkcs11.CKU_USER, opt.PIN)
		}()
		if err := t.m.logout(t.sessions[0]); err != nil {
			return Cell{}, fmt.Errorf("C_Logout before measuring login: %w", err)
		}
	}
	workers := make([]worker, 0, c)
	defer func() {
		for _, w := range workers {
			if w.tidy != nil {
				w.tidy(t.sessions[0])
			}
			if w.done != nil {
				w.done()
			}
		}
	}()
	for range c {
		w, err := p.worker()
		if err != nil {
			return Cell{}, err
		}
		workers = append(workers, w)
	}
	type out struct {
		n      uint64
		active time.Duration
		h      *Histogram
		err    error
	}
	outs := make([]out, c)
	var wg sync.WaitGroup
	start := make(chan struct{})
	warm, window := newPhase(c), newPhase(c)
	for i := range workers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w, s := workers[i], t.sessions[i]
			<-start
			if _, _, err := timeOp(warm, w, s, opt.Warmup, nil); err != nil {
				window.leave()
				outs[i].err = err
				return
			}
			h := NewHistogram()
			n, active, err := timeOp(window, w, s, opt.Duration, h)
			outs[i] = out{n: n, active: active, h: h, err: err}
		}(i)
	}
	close(start)
	wg.Wait()
	cell := Cell{Latency: NewHistogram()}
	var active time.Duration
	for _, o := range outs {
		if o.err != nil {
			return Cell{}, o.err
		}
		cell.Ops += o.n
		if o.active > 0 {
			cell.OpsPerS += float64(o.n) / o.active.Seconds()
		}
		active += o.active
		cell.Latency.Merge(o.h)
	}
	cell.Active = active / time.Duration(c)
	return cell, nil
}

// timeOp runs w's op in session s until d has passed, recording each
// latency in h (nil: none), and returns the ops done and the time they
// took. Time spent tidying is not the op's: it is left out of the
// latencies and the active time, and the window is extended by it.
// Tidying pauses every worker of the phase at once, so that none measures
// unwraps against another's burst of destroys. Time spent yielding is left
// out of the latencies only: with more workers than the process has Ps, a
// worker that yields waits for the others' turns, and leaving that wait
// out of its active time would count the same seconds of the machine
// once for each worker, so that the summed rate grew with the worker
// count on the same cores.
func timeOp(ph *phase, w worker, s session, d time.Duration, h *Histogram) (uint64, time.Duration, error) {
	defer ph.leave()
	var n uint64
	var paused time.Duration
	begin := time.Now()
	end := begin.Add(d)
	now := begin
	pause := func(f func() error) error {
		err := f()
		after := time.Now()
		paused += after.Sub(now)
		end = end.Add(after.Sub(now))
		now = after
		return err
	}
	for now.Before(end) {
		if n%64 == 63 {
			// A goroutine that lives in cgo calls or blocking system
			// calls never passes through the scheduler; after 10 ms the
			// runtime starts taking its P at every call, which costs a
			// thread hand-off per call.
			runtime.Gosched()
			now = time.Now()
		}
		if ph.tidyAsked() {
			if err := pause(func() error { return ph.tidyTogether(func() error { return w.tidy(s) }) }); err != nil {
				return n, 0, err
			}
		}
		tidy, err := w.do(s)
		after := time.Now()
		if err != nil {
			return n, 0, err
		}
		if h != nil {
			h.Record(after.Sub(now))
		}
		n++
		now = after
		if tidy {
			ph.askTidy()
		}
	}
	return n, now.Sub(begin) - paused, nil
}

// phase is one measuring stretch of a cell's workers (the warm-up, the
// window), with the barrier by which they tidy up together.
type phase struct {
	ask atomic.Bool

	mu    sync.Mutex
	cond  *sync.Cond
	n     int // workers still in the phase
	count int // arrived at the barrier
	gen   int
}

func newPhase(n int) *phase {
	p := &phase{n: n}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *phase) askTidy()        { p.ask.Store(true) }
func (p *phase) tidyAsked() bool { return p.ask.Load() }

// tidyTogether waits until every worker still in the phase has stopped,
// runs f, and waits again until all have tidied before any goes on.
func (p *phase) tidyTogether(f func() error) error {
	p.wait()
	p.ask.Store(false)
	err := f()
	p.wait()
	return err
}

// wait is a barrier over the workers still in the phase.
func (p *phase) wait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	g := p.gen
	p.count++
	if p.releaseLocked() {
		return
	}
	for g == p.gen {
		p.cond.Wait()
	}
}

// leave takes a worker whose time is up out of the barrier.
func (p *phase) leave() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n--
	p.releaseLocked()
}

func (p *phase) releaseLocked() bool {
	if p.count == 0 || p.count < p.n {
		return false
	}
	p.count = 0
	p.gen++
	p.cond.Broadcast()
	return true
}
