package keystore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Several Stores on one PostgreSQL database: daemons on several machines
// serving one security domain (docs/cluster.md). Each Store caches what
// it opened (objects, a token's keys, a logged-in token's data key); a
// change another Store commits must reach it. Three things make sure it
// does, within a bound B (Options.Invalidation):
//
//   - Every change to an object, a token, the master key's row or the
//     carried keys bumps the domain's change generation and notifies
//     it with the row, in the writing transaction (a trigger in the
//     server: migration 2 of pgschema.go), so the notification is
//     delivered when the change commits, and only then.
//   - Each Store listens on a connection of its own and drops what a
//     notification names: an object from the cache; a token's keys or
//     data key when its row says they changed; everything for the
//     master key's row. The generations arrive one after another; a gap
//     is a notification lost, and everything is dropped.
//   - A lease: every B/4 the listener reads the generation; when it has
//     seen every change up to it, the cache may be trusted until B after
//     the read began (every change acknowledged before the read has a
//     generation it has applied). Past the lease, Open reads the
//     database whatever the cache holds. So a listener that died, or a
//     notification lost without a gap to show it (the last one before
//     the connection dropped), leaves a stale entry usable at most B
//     after the change was acknowledged; and a listener that comes back
//     drops everything before it trusts the cache again.
//
// A Store's own changes are notified to it too; it dropped what they
// made stale itself when it made them, so it skips them.

// DefaultInvalidation is the bound Options.Invalidation defaults to.
const DefaultInvalidation = time.Second

// changesChannel is the channel of migration 2's notifications.
const changesChannel = "hsmemu_changes"

type syncer struct {
	s     *Store
	eng   *postgresEngine
	bound time.Duration
	poll  time.Duration
	base  time.Time    // the lease is in monotonic time since base
	until atomic.Int64 // the lease's end, in nanoseconds since base

	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	conn *pgx.Conn // the listening connection, nil between two
	err  error     // why the last connection ended

	// Tests: drop makes notifications lost; hang stops the listener as a
	// connection that stopped answering would; observe is told each
	// generation applied and what it named.
	drop    atomic.Bool
	hang    atomic.Bool
	observe atomic.Pointer[func(gen uint64, what string, own bool)]
}

// newSyncer starts listening before the Store is used: its cache is
// empty, so what was committed before is not in it, and what is
// committed from now on is notified. The lease starts now.
func newSyncer(ctx context.Context, s *Store, eng *postgresEngine, bound time.Duration) (*syncer, error) {
	y := &syncer{s: s, eng: eng, bound: bound, poll: max(bound/4, time.Millisecond), base: time.Now(),
		stop: make(chan struct{}), done: make(chan struct{})}
	read := y.now()
	conn, err := y.connect(ctx)
	if err != nil {
		return nil, err
	}
	var g uint64
	if err := conn.QueryRow(ctx, "SELECT generation FROM hsmemu_changes WHERE id = 1").Scan(&g); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("keystore: read the change generation: %w", err)
	}
	y.renew(read)
	go y.run(conn, g)
	return y, nil
}

func (y *syncer) now() int64 { return int64(time.Since(y.base)) }

// fresh reports whether the cache may be trusted now: the hot path's
// check, a clock read and an atomic load.
func (y *syncer) fresh() bool { return y.now() < y.until.Load() }

// renew extends the lease to B after read, the time a read of the
// generation that found nothing unseen began.
func (y *syncer) renew(read int64) {
	if u := read + int64(y.bound); u > y.until.Load() {
		y.until.Store(u)
	}
}

// close stops the listener: its context's end interrupts whatever it
// waits for.
func (y *syncer) close() {
	close(y.stop)
	<-y.done
}

// run keeps a listening connection, making a new one after a failure,
// until the Store closes. It starts with conn, which has seen every
// change after applied.
func (y *syncer) run(conn *pgx.Conn, applied uint64) {
	defer close(y.done)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-y.stop
		cancel()
	}()
	for {
		err := y.listen(ctx, conn, applied)
		y.mu.Lock()
		y.err = err
		y.mu.Unlock()
		select {
		case <-y.stop:
			return
		case <-time.After(min(y.poll, 100*time.Millisecond)):
		}
		conn = nil
		if conn, err = y.connect(ctx); err != nil {
			y.mu.Lock()
			y.err = err
			y.mu.Unlock()
			continue
		}
		// Whatever changed while nothing listened is unknown: drop it
		// all.
		if applied, err = y.resync(ctx, conn); err != nil {
			y.mu.Lock()
			y.err = err
			y.mu.Unlock()
			conn.Close(context.Background())
			conn = nil
		}
	}
}

// connect opens a listening connection.
func (y *syncer) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg := y.eng.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "hsmemu-listen"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("keystore: listen for changes: %s", redactErr(err))
	}
	if _, err := conn.Exec(ctx, "LISTEN "+changesChannel); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("keystore: listen for changes: %w", err)
	}
	return conn, nil
}

// listenerPID is the listening connection's server process, or 0.
func (y *syncer) listenerPID() uint32 {
	y.mu.Lock()
	defer y.mu.Unlock()
	if y.conn == nil {
		return 0
	}
	return y.conn.PgConn().PID()
}

// listen listens on conn, which has seen every change after applied,
// until it fails; nil conn fails at once.
func (y *syncer) listen(ctx context.Context, conn *pgx.Conn, applied uint64) error {
	if conn == nil {
		return errors.New("keystore: no listening connection")
	}
	y.mu.Lock()
	y.conn = conn
	y.mu.Unlock()
	defer func() {
		y.mu.Lock()
		y.conn = nil
		y.mu.Unlock()
		conn.Close(context.Background())
	}()
	// pend is the last poll's read while changes were unseen: once they
	// are applied, everything acknowledged before that read is.
	var pend struct {
		ok   bool
		gen  uint64
		read int64
	}
	next := time.Now().Add(y.poll)
	for {
		for y.hang.Load() && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		wctx, cancel := context.WithDeadline(ctx, next)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		for y.hang.Load() && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		switch {
		case err == nil:
			if y.drop.Load() {
				continue
			}
			gen, what, perr := parseChange(n.Payload)
			if perr != nil || gen > applied+1 {
				// A notification lost (or one not understood): everything
				// may be stale.
				if applied, err = y.resync(ctx, conn); err != nil {
					return err
				}
				pend.ok = false
				continue
			}
			if gen <= applied {
				continue // covered by a resync
			}
			own := n.PID == y.eng.writerPID.Load()
			if !own {
				y.s.changed(ctx, what)
			}
			applied = gen
			if pend.ok && applied >= pend.gen {
				y.renew(pend.read)
				pend.ok = false
			}
			if f := y.observe.Load(); f != nil {
				(*f)(gen, what, own)
			}
		case ctx.Err() != nil:
			return nil
		case pgconn.Timeout(err):
			next = time.Now().Add(y.poll)
			read := y.now()
			var g uint64
			if err := conn.QueryRow(ctx, "SELECT generation FROM hsmemu_changes WHERE id = 1").Scan(&g); err != nil {
				return err
			}
			switch {
			case g < applied || (pend.ok && applied < pend.gen):
				// A change acknowledged a poll ago still unseen: its
				// notification was lost. Or the database went back (a
				// failover to a standby that had not every commit).
				if applied, err = y.resync(ctx, conn); err != nil {
					return err
				}
				pend.ok = false
			case g == applied:
				y.renew(read)
				pend.ok = false
			default:
				// Notifications perhaps on their way: trusted once they
				// are in, the next poll at the latest.
				pend.ok, pend.gen, pend.read = true, g, read
			}
		default:
			return err
		}
	}
}

// resync drops everything this Store holds of what other Stores may have
// changed, and returns the generation it covers, renewing the lease from
// the read.
func (y *syncer) resync(ctx context.Context, conn *pgx.Conn) (uint64, error) {
	read := y.now()
	var g uint64
	if err := conn.QueryRow(ctx, "SELECT generation FROM hsmemu_changes WHERE id = 1").Scan(&g); err != nil {
		return 0, err
	}
	if err := y.s.changedAll(ctx); err != nil {
		return 0, err
	}
	y.s.signalMaster()
	y.renew(read)
	if f := y.observe.Load(); f != nil {
		(*f)(g, "*", false)
	}
	return g, nil
}

// parseChange reads a notification: "GENERATION WHAT", WHAT being o<id>
// (an object), t<id> (a token) or * (the domain's rows).
func parseChange(p string) (uint64, string, error) {
	for i := 0; i < len(p); i++ {
		if p[i] == ' ' {
			g, err := strconv.ParseUint(p[:i], 10, 64)
			if err != nil || g == 0 {
				break
			}
			return g, p[i+1:], nil
		}
	}
	return 0, "", fmt.Errorf("keystore: a change notification %q", p)
}

// forUpdate: PostgreSQL's row lock, held until the transaction ends.
func (*postgresEngine) forUpdate() string { return " FOR UPDATE" }

// forShare: PostgreSQL's shared row lock, held until the transaction
// ends; it waits for a rotation holding the row FOR UPDATE, and keeps
// one from starting.
func (*postgresEngine) forShare() string { return " FOR SHARE" }

// lockAudit takes the audit chain's lock for the transaction: one append
// at a time in the whole domain, so two never chain to the same head.
func (*postgresEngine) lockAudit(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('hsmemu/audit', 0))")
	return err
}

// lockNodes takes the nodes' advisory lock for the transaction, shared
// or exclusive.
func (*postgresEngine) lockNodes(ctx context.Context, tx *sql.Tx, exclusive bool) error {
	q := "SELECT pg_advisory_xact_lock_shared(hashtextextended('hsmemu/nodes', 0))"
	if exclusive {
		q = "SELECT pg_advisory_xact_lock(hashtextextended('hsmemu/nodes', 0))"
	}
	_, err := tx.ExecContext(ctx, q)
	return err
}

// releaseLocks gives up the advisory locks a connection of its own holds,
// then closes it. Closing alone would release them too, but the server
// lets go of them a moment after the client has gone: another try of
// the same lock right after (the next anchor, say) would find it held.
func releaseLocks(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn.Exec(ctx, "SELECT pg_advisory_unlock_all()") //nolint:errcheck // closing releases them anyway
	conn.Close(ctx)
}

// tokensLock is the tokens' advisory lock (lockTokens, holdTokens).
const tokensLock = "hashtextextended('hsmemu/tokens', 0)"

// lockTokens takes the tokens' advisory lock, shared, for the
// transaction.
func (*postgresEngine) lockTokens(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock_shared("+tokensLock+")")
	return err
}

// holdTokens holds the tokens' advisory lock exclusively on a connection
// of its own: released with it, or when the process dies.
func (e *postgresEngine) holdTokens(ctx context.Context) (func(), error) {
	cfg := e.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "hsmemu-job"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("keystore: lock tokens: %s", redactErr(err))
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock("+tokensLock+")"); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("keystore: lock tokens: %w", err)
	}
	return func() { releaseLocks(conn) }, nil
}

// job holds an advisory lock on a connection of its own: a job's lock
// is released when the job ends, or when its Store's process or
// connection dies, for another Store to take the job up (its progress
// is in the database).
func (e *postgresEngine) job(ctx context.Context, name string, wait bool) (func(), bool, error) {
	cfg := e.cfg.Copy()
	cfg.RuntimeParams["application_name"] = "hsmemu-job"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, false, fmt.Errorf("keystore: job %s: %s", name, redactErr(err))
	}
	ok := true
	if wait {
		_, err = conn.Exec(ctx, "SELECT pg_advisory_lock(hashtextextended($1, 0))", "hsmemu/job/"+name)
	} else {
		err = conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", "hsmemu/job/"+name).Scan(&ok)
	}
	if err != nil || !ok {
		conn.Close(context.Background())
		if err != nil {
			return nil, false, fmt.Errorf("keystore: lock job %s: %w", name, err)
		}
		return nil, false, nil
	}
	// The lock ends with the connection.
	return func() { releaseLocks(conn) }, true, nil
}

// changed drops what a change another Store made leaves stale.
func (s *Store) changed(ctx context.Context, what string) {
	if what == "" {
		return
	}
	id, err := strconv.ParseInt(what[1:], 10, 64)
	switch {
	case what[0] == 'o' && err == nil:
		s.cache.remove(ObjectID(id))
	case what[0] == 't' && err == nil:
		s.revalidateToken(ctx, id)
	default:
		s.changedAll(ctx) //nolint:errcheck // the lease runs out if it fails
		s.signalMaster()
	}
}
