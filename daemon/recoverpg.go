package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"hsmemu/keystore"
	"hsmemu/tpmroot/escrow"
)

// Domain recovery on PostgreSQL. A keystore in SQLite is recovered from a
// copy of its file into a new state directory (RecoverState); one in
// PostgreSQL is not copied: it stays where it is, and the new TPM takes
// it over in place. Where `domain join` adds a node beside live ones,
// recovery replaces every node: the domain's nodes' TPMs are lost, and
// with them every sealed copy of the master key, so the custodians'
// shares recreate it in the new TPM, which becomes the domain's only
// node. The old rows go, with their PIN bindings and master key copies,
// in the transaction that adds the new row and records node.recover; the
// new node then binds the PIN records from their recovery copies and
// anchors the keystore in a counter of its own TPM, as a join does. The
// old nodes' counters went with their TPMs; the anchor record, the
// domain's, is kept.

// NodeAliveWithin is how recently a node must have recorded its
// heartbeat for recovery to take it for alive: three heartbeats, so that
// one missed write, or clocks a little apart, does not make a serving
// node look dead.
const NodeAliveWithin = 3 * HeartbeatInterval

// ErrNodesAlive is RecoverPostgres's refusal, without ReplaceLive, of a
// domain whose nodes do not all look lost: a daemon holds the database,
// or a node recorded its heartbeat within NodeAliveWithin. Nothing is
// written.
var ErrNodesAlive = errors.New("the domain has nodes that look alive")

// RecoverOptions are RecoverPostgres's choices.
type RecoverOptions struct {
	// ReplaceLive replaces the nodes even when they look alive (a daemon
	// holds the database, or a node's heartbeat is recent): the operator
	// knows they are lost. A node still serving is cut off: its row is
	// gone, and it does not start again.
	ReplaceLive bool
}

// RecoverPostgres makes this machine's TPM (cfg.TPM, its state under
// cfg.Dir) the only node of the domain whose keystore is cfg.DB, a
// PostgreSQL database, from custodians' decrypted shares: at least the
// threshold of the current master key's; shares of earlier master keys,
// given beside them, open PIN records' recovery copies made before a
// rotation. Unless opts.ReplaceLive, it refuses (ErrNodesAlive) a
// database a daemon holds or a domain with a node seen within
// NodeAliveWithin; a TPM that is a node already is refused
// (ErrAlreadyProvisioned): it opens the domain as it is. A master key
// rotation begun and never moving anything is forgotten, as RecoverState
// forgets it; one that moved tokens is refused.
//
// If it fails once the nodes are replaced, the new row is taken back:
// the domain is left with no node, and recovery can be run again.
func RecoverPostgres(ctx context.Context, cfg StateConfig, shares []*escrow.Share, opts RecoverOptions) (res *RecoverResult, err error) {
	if kind, _, err := keystore.ParseDB(cfg.DB); err != nil {
		return nil, err
	} else if kind != keystore.EnginePostgres {
		return nil, errors.New("a keystore in SQLite is recovered from its file (--from PATH), into a new state directory")
	}
	// Before this opens the keystore, which takes the lock shared as
	// every serving daemon does.
	if !opts.ReplaceLive {
		if err := keystore.PostgresServed(ctx, cfg.DB, cfg.Store); errors.Is(err, keystore.ErrDatabaseInUse) {
			return nil, fmt.Errorf("%w: a daemon (or another command) has the keystore open; recovery replaces every node: stop them first, or replace them anyway if their TPMs are lost", ErrNodesAlive)
		} else if err != nil {
			return nil, err
		}
	}
	st, rec, err := openNewNode(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if rec.Next != nil {
		started, err := st.Store.RotationStarted(ctx)
		if err != nil {
			return nil, err
		}
		if started {
			return nil, errors.New("a master key rotation begun on a lost node was moving the keystore to the next master key: recovering from the middle of a rotation is not supported (docs/cluster.md)")
		}
	}
	nm, err := st.loadFromShares(ctx, rec, shares)
	if err != nil {
		return nil, err
	}
	srk := st.TPM.SRKName()
	nodes, err := st.Store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	if live := aliveNodes(nodes, time.Now()); len(live) > 0 && !opts.ReplaceLive {
		return nil, fmt.Errorf("%w: %s; recovery replaces every node: stop them first, or replace them anyway if their TPMs are lost", ErrNodesAlive, strings.Join(live, ", "))
	}
	detail := map[string]string{}
	if rec.Next != nil {
		// Begun on a lost node and never moving anything: its next master
		// key is sealed to a TPM that is gone, and is forgotten.
		if err := st.Store.AbortMasterRotation(ctx); err != nil {
			return nil, err
		}
		detail["rotation_aborted"] = "true"
	}
	var replaced []int64
	st.Node, replaced, err = st.Store.ReplaceNodes(ctx, adminActor(), keystore.NodeSpec{TPMID: srk, Sealed: nm.sealed, ImportKey: nm.importKey}, detail)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			// Not recovered: the new row goes too, and recovery can be
			// made again on a domain with no node.
			if ferr := st.Store.ForgetNode(context.Background(), st.Node); ferr != nil {
				err = errors.Join(err, ferr)
			}
			err = fmt.Errorf("%w (the domain's nodes were replaced, and the new one taken back: the domain has no node until recovery is run again)", err)
		}
	}()
	res = &RecoverResult{Domain: rec.DomainID, Node: st.Node, TPM: srk, Replaced: replaced}
	if res.ReboundPINs, res.UnboundPINs, res.UnusedShares, err = st.bindNode(ctx, nm); err != nil {
		return nil, err
	}
	if _, _, err := anchor(ctx, st.TPM, st.Store, st.Root.DomainID(), "domain recover", st.logger()); err != nil {
		return nil, fmt.Errorf("anchor the keystore in this TPM: %w", err)
	}
	return res, nil
}

// aliveNodes names the nodes seen within NodeAliveWithin of now. A row
// that fails its integrity check is no evidence of life (its time cannot
// be believed); it is replaced with the rest.
func aliveNodes(nodes []keystore.Node, now time.Time) []string {
	var live []string
	for _, n := range nodes {
		if n.Tampered != nil {
			continue
		}
		if ago := now.Sub(n.LastSeen); ago < NodeAliveWithin {
			live = append(live, fmt.Sprintf("node %d (TPM %s) was seen %s ago, within %s",
				n.ID, n.ShortTPM(), max(ago, 0).Truncate(time.Second), NodeAliveWithin))
		}
	}
	return live
}
