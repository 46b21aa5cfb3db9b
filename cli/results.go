package cli

import (
	"time"

	"hsmemu/daemon/adminapi"
)

// The results of commands whose answer is the command line's own rather
// than the daemon's, as --json prints them (docs/json.md).

// tokenDeleted is token delete's result.
type tokenDeleted struct {
	Token   string `json:"token"`
	Deleted bool   `json:"deleted"`
}

// pinDone is the result of pin change, reset and unlock.
type pinDone struct {
	Token  string `json:"token"`
	Role   string `json:"role"`   // user or so
	Action string `json:"action"` // change, reset or unlock
}

// keysDone is what key delete, recover and purge did, in one shape: the
// keys, whether the token keeps them recoverable, and until when.
type keysDone struct {
	Keys       []adminapi.Key `json:"keys"`
	Kept       bool           `json:"kept"`
	PurgeAfter time.Time      `json:"purge_after,omitempty"`
}

// keyBackedUp is key backup's result.
type keyBackedUp struct {
	Keys []adminapi.Key `json:"keys"`
	File string         `json:"file"`
}

// storeBackedUp is backup's result.
type storeBackedUp struct {
	Domain string `json:"domain"`
	File   string `json:"file"`
	Bytes  int64  `json:"bytes"`
}

// storeRestored is restore's result.
type storeRestored struct {
	Domain     string     `json:"domain"`
	StateDir   string     `json:"state_dir"`
	Reanchored reanchored `json:"reanchored"`
	Replaced   string     `json:"replaced,omitempty"` // where the state directory it replaced was moved
}

type reanchored struct {
	Counter       string `json:"counter"`
	Value         uint64 `json:"value"` // the counter's value the keystore now records
	AnchorsBehind uint64 `json:"anchors_behind"`
}

// domainRecovered is domain recover's result.
type domainRecovered struct {
	Domain       string    `json:"domain"`
	Node         int64     `json:"node"`
	TPM          string    `json:"tpm"`
	StateDir     string    `json:"state_dir"`
	Shares       int       `json:"shares"`
	Replaced     []int64   `json:"replaced_nodes"`
	PINsRebound  int       `json:"pins_rebound"`
	PINsUnbound  []unbound `json:"pins_unbound"`
	UnusedShares []string  `json:"unused_shares"`
}

// unbound is a PIN record that could not be brought into the new TPM.
type unbound struct {
	Token            string `json:"token"`
	Role             string `json:"role"`
	MasterGeneration uint32 `json:"master_generation"`
	Why              string `json:"why"`
}

// masterRotated is rotate master's result: the generation of the master
// key in force, the custodians' new shares, and whether --abort forgot a
// rotation instead.
type masterRotated struct {
	Generation uint32       `json:"generation"`
	Shares     []shareWrite `json:"shares"`
	Aborted    bool         `json:"aborted"`
}

// publicKeyOut is key export-public's result; File is null when the PEM
// went to stdout.
type publicKeyOut struct {
	adminapi.PublicKey
	File string `json:"file,omitempty"`
}

// secretGot is secret get's result; Value is null and File the file
// written when --out took the value.
type secretGot struct {
	adminapi.SecretValue
	File string `json:"file,omitempty"`
}
