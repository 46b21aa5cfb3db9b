package bench

import "time"

// Cell is what one run measured for one operation on one module at one
// concurrency.
type Cell struct {
	Ops     uint64        // operations completed in the window
	Active  time.Duration // the workers' measuring time (their mean)
	OpsPerS float64       // sum over workers of ops/active time
	Latency *Histogram    // every operation's latency, all workers merged
}

// Result is one operation x module x concurrency over all runs.
type Result struct {
	Op          string  `json:"op"`
	Convention  string  `json:"convention,omitempty"` // OneCall or TwoCall, for an op with an output buffer
	Module      string  `json:"module"`               // the name shown: the module's file name, made unique
	ModulePath  string  `json:"module_path"`
	Concurrency int     `json:"concurrency"`
	Status      string  `json:"status"`              // "ok", "unsupported" or "failed"
	Reason      string  `json:"reason,omitempty"`    // why unsupported or failed
	Mechanism   string  `json:"mechanism,omitempty"` // the mechanism used where the op could choose
	Runs        int     `json:"runs"`                // runs measured
	OpsPerS     float64 `json:"ops_per_s"`           // median over runs
	OpsPerSMin  float64 `json:"ops_per_s_min"`
	OpsPerSMax  float64 `json:"ops_per_s_max"`
	P50         Micros  `json:"p50_us"` // median over runs of each run's p50
	P99         Micros  `json:"p99_us"`
	Ratio       float64 `json:"ratio,omitempty"` // OpsPerS / the baseline module's, same op and concurrency; 0 when either is missing
	// FloorRatio is P50 over the bare round trip's p50 times the PKCS#11
	// calls the op makes: how close a module that crosses a process
	// boundary comes to the cost of crossing it. The round trip is over
	// the module's transport: the rings (RingFloor), unless the spec or
	// HSMEMU_TRANSPORT chose the socket (Floor). Concurrency 1 only.
	FloorRatio float64 `json:"floor_ratio,omitempty"`
	// Remote: the module reached its daemon over TLS; its FloorRatio is
	// then to the TLS floor, and TLSRatio is its P50 over what the same
	// module's P50 through the socket predicts: that plus, for each call,
	// the TLS floor's p50 less the socket floor's. Concurrency 1 only.
	Remote   bool    `json:"remote,omitempty"`
	TLSRatio float64 `json:"tls_ratio,omitempty"`
	// BareRatio is P50 over the bare library call's p50 plus one socket
	// round trip's, for the ops that have a bare call (bench/pqc.go).
	// Concurrency 1 only.
	BareRatio float64 `json:"bare_ratio,omitempty"`

	// overSocket: the module was told to use the socket, not the rings.
	overSocket bool

	cells []Cell
}

// id names the result's op with its convention, as op.id does.
func (r *Result) id() string {
	if r.Convention == "" {
		return r.Op
	}
	return r.Op + "/" + r.Convention
}

// Micros is a duration shown and encoded in microseconds.
type Micros time.Duration

// Report is a whole run of the harness: what was asked and what came out.
type Report struct {
	Started     time.Time     `json:"started"`
	Host        string        `json:"host"`
	CPUs        int           `json:"cpus"`
	Duration    time.Duration `json:"-"`
	Runs        int           `json:"runs"`
	Modules     []string      `json:"modules"` // names, baseline first
	Concurrency []int         `json:"concurrency"`
	Conventions []string      `json:"conventions"`
	Keys        string        `json:"keys"`            // "token" or "session" objects
	Setup       []SetupNote   `json:"setup,omitempty"` // e.g. populate time of the find objects
	// Floor is a bare request and reply of 28 and 53 bytes over a Unix
	// socket to another process, measured in the same runs: the least any
	// call to a module in another process can cost.
	Floor *Result `json:"floor,omitempty"`
	// RingFloor is the same request and reply through the shared-memory
	// rings the module uses by default, also to another process.
	RingFloor *Result `json:"ring_floor,omitempty"`
	// TLSFloor, when a module reaches its daemon over TLS, is the same
	// request and reply over TLS 1.3 on loopback TCP to another process.
	TLSFloor *Result `json:"tls_floor,omitempty"`
	// Bare are the library calls the post-quantum ops are compared with,
	// measured in this process in the same runs.
	Bare    []Result `json:"bare,omitempty"`
	Results []Result `json:"results"`
}

// SetupNote records something the harness did before measuring, such as
// populating the objects for find, and how long it took.
type SetupNote struct {
	Module string `json:"module"`
	What   string `json:"what"`
	Took   Micros `json:"took_us"`
}
