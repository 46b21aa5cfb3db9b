/*
 * defer.c: Inits that travel with the next call (docs/protocol.md,
 * "Deferred Init").
 *
 * A signature is two calls, C_SignInit and C_Sign, and each was a round
 * trip to the daemon. An Init the daemon accepted before (the same
 * session, kind, mechanism and key: defer.c remembers them, byte strings
 * inside a parameter structure, such as GCM's IV, only by their length),
 * on a session the daemon last said had no operation in progress, is not
 * sent: the stub returns CKR_OK, and the Init's request goes out with the
 * session's next call, in the same write, its reply read with that call's.
 * The daemon still checks everything, in order. What moves is only where
 * a failure shows: an Init that the daemon refuses then (its key destroyed
 * by another application meanwhile, say) fails the call that continues
 * its operation with the Init's rv, or, when the next call does not
 * continue it, the one that next does.
 *
 * Within the application nothing else moves:
 *  - a call that may destroy or change objects or end logins or sessions
 *    (calls.Role.Mutates) waits until no deferred Init is on its way,
 *    sends the held ones, and forgets every accepted Init at its start and
 *    at its end, so it runs after every Init that returned before it
 *    started, and an Init accepted while it ran is checked again;
 *  - calls on a session whose deferred Init is on its way wait for it, so
 *    two threads sharing a session keep their order;
 *  - a session counts as idle only from a reply to a call that was alone
 *    on its session while it ran;
 *  - a daemon that holds nothing of the application (it restarted, or
 *    every connection broke) drops the held Inits and every session's
 *    state: the sessions they name are gone, and their numbers may come
 *    back naming others (pool.c runs app_fresh, its fresh hook, under its
 *    dial lock; exchange.c's application generation stops an Init already
 *    taken from being sent);
 *  - an Init whose exchange failed may or may not have run: nothing is
 *    recorded, and the next call asks the daemon.
 *
 * The state is one table under one mutex, never held across I/O. Sessions
 * past the table's size, or Inits past the memory's, are simply sent; a
 * held result whose cancel the table has no room for is not handed over
 * (held.c), and its follow-up goes to the daemon. The
 * Inits go out through exchange.c, below this file; nothing below calls
 * into it but through the pool's hook.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hsm.h"

#define SESS_MAX 128   /* sessions whose state is kept */
#define ACCEPT_MAX 128 /* accepted Inits remembered */
#define SHAPE_MAX 200  /* the longest Init shape remembered */

typedef struct {
	uint64_t handle;
	int used;
	int idle;            /* the daemon's word: no operation in progress */
	unsigned long seq;   /* calls begun on the session */
	int calls;           /* calls on the session in flight */
	int busy;            /* its deferred Init is on its way: other calls wait */
	uint8_t *init;       /* the deferred Init's request frame, or NULL */
	size_t init_len;
	size_t init_cap;     /* its allocation, wiped when it is freed */
	unsigned init_kind;
	CK_RV failed;        /* a deferred Init the daemon refused, not yet reported */
	unsigned failed_kind;
	/* An operation whose result held.c handed over, which the daemon
	 * still keeps: C_SessionCancel(owe_call, owe) goes ahead of the
	 * session's next frame. 0: none owed. */
	uint64_t owe;
	uint32_t owe_call;
} sess;

typedef struct {
	unsigned kind;
	size_t len;
	uint8_t shape[SHAPE_MAX];
} accepted;

static struct {
	hsm_mutex *mu;
	sess s[SESS_MAX];
	accepted a[ACCEPT_MAX];
	unsigned na, next;
	unsigned long gen;     /* bumped whenever the accepted Inits are forgotten */
	int travelling;        /* deferred Inits taken from the table, not yet answered */
	int mutating;          /* mutating calls under way: nothing is deferred */
} d;
/* The daemon's application generation lives in exchange.c, which checks
 * it before sending a held Init; this file moves it with the table (under
 * d.mu, at C_Initialize, in a child) and reads it under d.mu. */

/* nap waits a little, longer each time (us: from 50 us to 1 ms). */
static void nap(long *us)
{
	if (*us == 0)
		*us = 50;
	struct timespec ts = {0, *us * 1000};
	nanosleep(&ts, NULL);
	if (*us < 1000)
		*us *= 2;
}

static void drop_all(void)
{
	for (int i = 0; i < SESS_MAX; i++) {
		hsm_free_wipe(d.s[i].init, d.s[i].init_cap);
		memset(&d.s[i], 0, sizeof d.s[i]);
	}
	d.na = d.next = 0;
	d.gen++;
	hsm_exchange_app_next();
	d.travelling = d.mutating = 0;
}

static void app_fresh(unsigned long epoch);

CK_RV hsm_defer_init(void)
{
	hsm_mutex *mu;
	CK_RV rv = hsm_mutex_new(&mu);
	if (rv != CKR_OK)
		return rv;
	drop_all();
	d.mu = mu;
	/* Stays registered: once finalized, its gate keeps it out. */
	hsm_pool_on_fresh(app_fresh);
	return CKR_OK;
}

void hsm_defer_finalize(void)
{
	if (d.mu == NULL)
		return;
	hsm_lock(d.mu);
	drop_all();
	hsm_unlock(d.mu);
	hsm_mutex_free(d.mu);
	d.mu = NULL;
}

void hsm_defer_forget_inherited(void)
{
	/* As pool.c: the mutex may be held by a thread of the parent. The
	 * parent's deferred Inits belong to its sessions, not the child's. */
	drop_all();
	if (d.mu != NULL)
		hsm_mutex_abandon(d.mu);
	d.mu = NULL;
}

void hsm_defer_atfork_prepare(void)
{
	if (d.mu != NULL)
		hsm_lock(d.mu);
}

void hsm_defer_atfork_parent(void)
{
	if (d.mu != NULL)
		hsm_unlock(d.mu);
}

static sess *find(uint64_t h)
{
	for (int i = 0; i < SESS_MAX; i++)
		if (d.s[i].used && d.s[i].handle == h)
			return &d.s[i];
	return NULL;
}

/* add makes room for session h: a free entry, or one that holds nothing
 * but an idle flag, or last a refusal not yet reported (whose session may
 * be long gone). NULL when every entry is in use. */
static sess *add(uint64_t h)
{
	sess *spare = NULL, *last = NULL;
	for (int i = 0; i < SESS_MAX; i++) {
		sess *e = &d.s[i];
		if (!e->used) {
			spare = e;
			break;
		}
		if (e->init != NULL || e->busy || e->calls != 0 || e->owe != 0)
			continue;
		if (e->failed == CKR_OK) {
			if (spare == NULL)
				spare = e;
		} else if (last == NULL) {
			last = e;
		}
	}
	if (spare == NULL)
		spare = last;
	if (spare != NULL) {
		memset(spare, 0, sizeof *spare);
		spare->used = 1;
		spare->handle = h;
	}
	return spare;
}

static int is_accepted(unsigned kind, const hsm_wbuf *shape)
{
	for (unsigned i = 0; i < d.na; i++)
		if (d.a[i].kind == kind && d.a[i].len == shape->len && memcmp(d.a[i].shape, shape->p, shape->len) == 0)
			return 1;
	return 0;
}

static void accept(unsigned kind, const hsm_wbuf *shape)
{
	if (is_accepted(kind, shape))
		return;
	accepted *a;
	if (d.na < ACCEPT_MAX) {
		a = &d.a[d.na++];
	} else {
		a = &d.a[d.next];
		d.next = (d.next + 1) % ACCEPT_MAX;
	}
	a->kind = kind;
	a->len = shape->len;
	memcpy(a->shape, shape->p, shape->len);
}

static void forget_accepted(void)
{
	d.na = d.next = 0;
	d.gen++;
}

static int shape_ok(const hsm_call *c)
{
	return c->shape.err == CKR_OK && c->shape.len > 0 && c->shape.len <= SHAPE_MAX;
}

/* app_fresh is the pool's fresh hook: a new connection's hello said the
 * daemon holds nothing of this application, so held Inits name sessions
 * that are gone. The pool runs it under its dial lock, before the
 * connection is used, so no connection joins the new application first.
 * The dial may be a C_WaitForSlotEvent's that C_Finalize overtook: the
 * gate keeps d.mu from being freed under it, or keeps it out. */
static void app_fresh(unsigned long epoch)
{
	if (!hsm_gate_enter(epoch))
		return;
	hsm_lock(d.mu);
	for (int i = 0; i < SESS_MAX; i++) {
		sess *e = &d.s[i];
		hsm_free_wipe(e->init, e->init_cap);
		e->init = NULL;
		e->failed = CKR_OK;
		e->idle = 0;
		e->owe = 0;
		if (!e->busy && e->calls == 0)
			memset(e, 0, sizeof *e);
	}
	forget_accepted();
	hsm_exchange_app_next();
	hsm_unlock(d.mu);
	hsm_gate_leave();
}

int hsm_defer_hold(hsm_call *c)
{
	if (!c->on_session || !shape_ok(c) || d.mu == NULL)
		return 0;
	int held = 0;
	hsm_lock(d.mu);
	sess *e = find(c->session);
	if (d.mutating == 0 && e != NULL && e->idle && e->calls == 0 && !e->busy && e->init == NULL &&
	    e->failed == CKR_OK && is_accepted(c->starts, &c->shape)) {
		hsm_put_be32(c->req.p, (uint32_t)(c->req.len - 4));
		e->init = c->req.p;
		e->init_len = c->req.len;
		e->init_cap = c->req.cap;
		e->init_kind = c->starts;
		e->idle = 0;
		c->req.p = NULL;
		held = 1;
	}
	hsm_unlock(d.mu);
	return held;
}

/* flush sends every held Init of the application on its own, once none is
 * on its way (with a call, or in another mutating call's flush), and
 * records the daemon's answers. */
static void flush(void)
{
	hsm_wbuf reqs[SESS_MAX];
	uint64_t handles[SESS_MAX];
	unsigned kinds[SESS_MAX];
	uint64_t owed[SESS_MAX];
	uint32_t owed_call[SESS_MAX];
	int n = 0;
	long us = 0;

	for (;;) {
		hsm_lock(d.mu);
		if (d.travelling == 0)
			break;
		hsm_unlock(d.mu);
		nap(&us);
	}
	unsigned long app_gen = hsm_exchange_app_gen();
	for (int i = 0; i < SESS_MAX; i++) {
		sess *e = &d.s[i];
		if (!e->used || e->init == NULL)
			continue;
		reqs[n] = (hsm_wbuf){.p = e->init, .len = e->init_len, .cap = e->init_cap, .err = CKR_OK};
		handles[n] = e->handle;
		kinds[n] = e->init_kind;
		owed[n] = e->owe;
		owed_call[n] = e->owe_call;
		n++;
		e->owe = 0;
		e->init = NULL;
		e->busy = 1;
		d.travelling++;
	}
	hsm_unlock(d.mu);

	for (int i = 0; i < n; i++) {
		/* An owed cancel goes ahead of the Init, in the same write. */
		hsm_wbuf cancel = {.err = CKR_OK};
		hsm_wbuf *r[2];
		int m = 0;
		if (owed[i] != 0) {
			hsm_put_u32(&cancel, 0);
			hsm_put_u32(&cancel, 0);
			hsm_put_u32(&cancel, owed_call[i]);
			hsm_put_u64(&cancel, handles[i]);
			hsm_put_u64(&cancel, owed[i]);
			if (cancel.err == CKR_OK)
				r[m++] = &cancel;
		}
		r[m++] = &reqs[i];
		CK_RV rvs[2] = {CKR_OK, CKR_OK};
		int idles[2] = {0, 0};
		uint8_t *replies[2] = {NULL, NULL};
		uint32_t lens[2] = {0, 0};
		enum hsm_io io = hsm_exchange(r, m, rvs, idles, replies, lens, hsm_config_get()->timeout_ms, app_gen);
		CK_RV rv = rvs[m - 1];
		for (int j = 0; j < 2; j++)
			hsm_free_wipe(replies[j], lens[j]);
		hsm_wbuf_free(&cancel);
		hsm_wbuf_free(&reqs[i]);
		hsm_lock(d.mu);
		d.travelling--;
		sess *e = find(handles[i]);
		if (e != NULL) {
			e->busy = 0;
			e->idle = 0;
			if (io != HSM_IO_OK && io != HSM_IO_STALE)
				e->owe |= owed[i]; /* it may not have run */
			/* Refused: recorded. No answer: it may have run. */
			if (io == HSM_IO_OK && rv != CKR_OK) {
				e->failed = rv;
				e->failed_kind = kinds[i];
			}
		}
		hsm_unlock(d.mu);
	}
}

CK_RV hsm_defer_begin(hsm_call *c, hsm_carry *k)
{
	memset(k, 0, sizeof *k);
	/* Calls that touch neither a session nor objects leave the state
	 * alone: C_WaitForSlotEvent, which C_Finalize may overtake, among
	 * them. */
	if (d.mu == NULL || (!c->on_session && !c->mutates)) {
		k->skip = 1;
		return CKR_OK;
	}
	k->epoch = hsm_epoch();
	if (c->mutates) {
		hsm_lock(d.mu);
		d.mutating++;
		forget_accepted();
		hsm_unlock(d.mu);
		k->mutating = 1;
		flush();
	}
	if (!c->on_session)
		return CKR_OK; /* an Init, the one user of k->gen, is on a session */
	long us = 0;
	for (;;) {
		hsm_lock(d.mu);
		sess *e = find(c->session);
		if (e != NULL && e->busy) {
			hsm_unlock(d.mu);
			nap(&us);
			continue;
		}
		if (e == NULL)
			e = add(c->session);
		k->gen = d.gen;
		CK_RV rv = CKR_OK;
		if (e != NULL) {
			k->tracked = 1;
			k->alone = e->calls == 0;
			k->seq = ++e->seq;
			e->calls++;
			if (c->starts || c->continues)
				e->idle = 0; /* the reply says again */
			if (e->owe != 0) {
				k->cancel = e->owe;
				k->cancel_call = e->owe_call;
				k->app_gen = hsm_exchange_app_gen();
				e->owe = 0;
				e->busy = 1;
				d.travelling++;
			}
			if (e->init != NULL) {
				k->init = e->init;
				k->init_len = e->init_len;
				k->init_cap = e->init_cap;
				k->kind = e->init_kind;
				k->app_gen = hsm_exchange_app_gen();
				e->init = NULL;
				if (!e->busy) {
					e->busy = 1;
					d.travelling++;
				}
			} else if (e->failed != CKR_OK && (e->failed_kind & (c->continues | c->starts))) {
				/* Continued: report it. A new Init of its kind: the
				 * daemon has no operation of it; let the Init speak. */
				if (c->continues & e->failed_kind)
					rv = e->failed;
				e->failed = CKR_OK;
			}
		}
		hsm_unlock(d.mu);
		return rv;
	}
}

void hsm_defer_end(hsm_call *c, hsm_carry *k, int replied, CK_RV init_rv)
{
	int carried = k->init != NULL || k->cancel != 0;
	hsm_free_wipe(k->init, k->init_cap);
	k->init = NULL;
	/* A call that outlived C_Finalize belongs to a table that is gone. */
	if (k->skip || d.mu == NULL || hsm_epoch() != k->epoch)
		return;
	hsm_lock(d.mu);
	if (carried)
		d.travelling--;
	if (k->mutating) {
		d.mutating--;
		forget_accepted(); /* Inits accepted while it ran */
	}
	if (c->mutates && !c->on_session && replied && c->rv == CKR_OK) {
		/* C_CloseAllSessions, C_InitToken: the slot's sessions end.
		 * The table does not know their slots: every idle state goes,
		 * and refusals not yet reported and owed cancels stay (session
		 * handles are never reused, so a cancel for a closed one ends
		 * nothing). */
		for (int i = 0; i < SESS_MAX; i++) {
			sess *e = &d.s[i];
			if (e->init == NULL && !e->busy && e->calls == 0 && e->failed == CKR_OK && e->owe == 0)
				memset(e, 0, sizeof *e);
			else
				e->idle = 0;
		}
	}
	sess *e = k->tracked ? find(c->session) : NULL;
	if (e != NULL) {
		e->calls--;
		if (carried)
			e->busy = 0;
		/* A cancel that may not have reached the daemon is owed still,
		 * unless the daemon's application is another one now. */
		if (k->cancel != 0 && !replied && k->app_gen == hsm_exchange_app_gen()) {
			e->owe |= k->cancel;
			e->owe_call = k->cancel_call;
		}
		if (c->closes && replied && c->rv == CKR_OK && e->calls == 0 && e->init == NULL && !e->busy) {
			memset(e, 0, sizeof *e);
			e = NULL;
		}
	}
	if (e != NULL) {
		/* Idle only from a call that was alone on its session. */
		if (!replied || !c->idle)
			e->idle = 0;
		else if (k->alone && e->seq == k->seq)
			e->idle = 1;
		/* A refused deferred Init that this call neither continued
		 * nor replaced: the next call that continues it reports it. */
		if (carried && replied && init_rv != CKR_OK && !((c->continues | c->starts) & k->kind)) {
			e->failed = init_rv;
			e->failed_kind = k->kind;
		}
	}
	/* An Init the daemon accepted, with nothing forgotten meanwhile. */
	if (c->starts && replied && c->rv == CKR_OK && k->gen == d.gen && shape_ok(c))
		accept(c->starts, &c->shape);
	hsm_unlock(d.mu);
}

int hsm_defer_collected(uint64_t session, uint32_t call, uint64_t flags, unsigned long seq, int idle_but,
			unsigned long app_gen)
{
	if (d.mu == NULL)
		return 0;
	hsm_lock(d.mu);
	/* app_fresh moves the generation under d.mu: a cancel recorded after
	 * it would name a session of an application the daemon dropped. */
	sess *e = NULL;
	if (app_gen == hsm_exchange_app_gen()) {
		e = find(session);
		if (e == NULL)
			e = add(session);
	}
	if (e != NULL) {
		e->owe |= flags;
		e->owe_call = call;
		/* Idle when the prefetch's reply said so but for this
		 * operation, and nothing began on the session since. */
		if (idle_but && e->seq == seq && e->calls == 0 && !e->busy && e->init == NULL && e->failed == CKR_OK)
			e->idle = 1;
	}
	hsm_unlock(d.mu);
	return e != NULL;
}

void hsm_defer_forget_failed(uint64_t session, unsigned kinds)
{
	if (d.mu == NULL)
		return;
	hsm_lock(d.mu);
	sess *e = find(session);
	if (e != NULL && (e->failed_kind & kinds))
		e->failed = CKR_OK;
	hsm_unlock(d.mu);
}
