/*
 * defer.c: Inits that travel with the next call (docs/protocol.md,
 * "Deferred Init").
 *
 * A signature is two calls, C_SignInit and C_Sign, and each was a round
 * trip to the daemon. An Init the daemon accepted before (the same kind,
 * mechanism and key: defer.c remembers them, parameters' byte strings such
 * as an IV only by their length), on a session the daemon last said had no
 * operation in progress, is not sent: the stub returns CKR_OK, and the
 * Init's request goes out with the session's next call, in the same write,
 * its reply read with that call's. The daemon still checks everything, in
 * order. What moves is only where a failure shows: an Init that the
 * daemon refuses then (its key destroyed by another application
 * meanwhile, say) fails the call that continues its operation with the
 * Init's rv, or, when the next call does not continue it, the one that
 * next does.
 *
 * Within the application nothing else moves: a call that may destroy or
 * change objects or end logins or sessions (calls.Role.Mutates) first
 * waits for deferred Inits already on their way, sends the others, and
 * forgets every accepted Init, so it runs after every Init that returned
 * before it started, as without deferral.
 *
 * The state is one table under one mutex, never held across I/O. Sessions
 * past the table's size, or Inits past the memory's, are simply sent.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hsm.h"

#define SESS_MAX 128  /* sessions whose state is kept */
#define ACCEPT_MAX 64 /* accepted Inits remembered */
#define SHAPE_MAX 192 /* the longest Init shape remembered */

typedef struct {
	uint64_t handle;
	int used;
	int idle;            /* the daemon's last word: no operation in progress */
	int flushing;        /* a mutating call is sending the deferred Init */
	uint8_t *init;       /* the deferred Init's request frame, or NULL */
	size_t init_len;
	unsigned init_kind;
	CK_RV failed;        /* a deferred Init the daemon refused, not yet reported */
	unsigned failed_kind;
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
	int na, next;
	unsigned long gen; /* bumped whenever the accepted Inits are forgotten */
	int inflight;      /* deferred Inits on their way with a call */
	int mutating;      /* mutating calls under way: nothing is deferred */
} d;

static void nap(void)
{
	struct timespec ts = {0, 50 * 1000};
	nanosleep(&ts, NULL);
}

static void drop_all(void)
{
	for (int i = 0; i < SESS_MAX; i++) {
		free(d.s[i].init);
		memset(&d.s[i], 0, sizeof d.s[i]);
	}
	d.na = d.next = 0;
	d.gen++;
	d.inflight = d.mutating = 0;
}

CK_RV hsm_defer_init(void)
{
	hsm_mutex *mu;
	CK_RV rv = hsm_mutex_new(&mu);
	if (rv != CKR_OK)
		return rv;
	drop_all();
	d.mu = mu;
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

static sess *find(uint64_t h)
{
	for (int i = 0; i < SESS_MAX; i++)
		if (d.s[i].used && d.s[i].handle == h)
			return &d.s[i];
	return NULL;
}

/* add makes room for session h: a free entry, or one that holds nothing
 * but its idle flag. NULL when every entry is in use. */
static sess *add(uint64_t h)
{
	sess *spare = NULL;
	for (int i = 0; i < SESS_MAX; i++) {
		sess *e = &d.s[i];
		if (!e->used) {
			spare = e;
			break;
		}
		if (spare == NULL && e->init == NULL && !e->flushing && e->failed == CKR_OK)
			spare = e;
	}
	if (spare != NULL) {
		memset(spare, 0, sizeof *spare);
		spare->used = 1;
		spare->handle = h;
	}
	return spare;
}

static int is_accepted(unsigned kind, const hsm_wbuf *shape)
{
	for (int i = 0; i < d.na; i++)
		if (d.a[i].kind == kind && d.a[i].len == shape->len && memcmp(d.a[i].shape, shape->p, shape->len) == 0)
			return 1;
	return 0;
}

static void accept(unsigned kind, const hsm_wbuf *shape)
{
	if (is_accepted(kind, shape))
		return;
	accepted *a = d.na < ACCEPT_MAX ? &d.a[d.na++] : &d.a[d.next++ % ACCEPT_MAX];
	a->kind = kind;
	a->len = shape->len;
	memcpy(a->shape, shape->p, shape->len);
}

static void forget_accepted(void)
{
	d.na = d.next = 0;
	d.gen++;
}

void hsm_defer_reconnected(void)
{
	if (d.mu == NULL)
		return;
	hsm_lock(d.mu);
	forget_accepted();
	for (int i = 0; i < SESS_MAX; i++)
		d.s[i].idle = 0;
	hsm_unlock(d.mu);
}

int hsm_defer_hold(hsm_call *c)
{
	if (!c->on_session || c->shape.err != CKR_OK || c->shape.len == 0 || c->shape.len > SHAPE_MAX ||
	    d.mu == NULL)
		return 0;
	int held = 0;
	hsm_lock(d.mu);
	sess *e = find(c->session);
	if (d.mutating == 0 && e != NULL && e->idle && e->init == NULL && !e->flushing && e->failed == CKR_OK &&
	    is_accepted(c->starts, &c->shape)) {
		hsm_put_be32(c->req.p, (uint32_t)(c->req.len - 4));
		e->init = c->req.p;
		e->init_len = c->req.len;
		e->init_kind = c->starts;
		e->idle = 0;
		c->req.p = NULL;
		held = 1;
	}
	hsm_unlock(d.mu);
	return held;
}

/* flush sends every deferred Init of the application on its own, once
 * none is on its way with a call, and records the daemon's answers. */
static void flush(void)
{
	hsm_wbuf reqs[SESS_MAX];
	uint64_t handles[SESS_MAX];
	unsigned kinds[SESS_MAX];
	int n = 0;

	for (;;) {
		hsm_lock(d.mu);
		if (d.inflight == 0)
			break;
		hsm_unlock(d.mu);
		nap();
	}
	for (int i = 0; i < SESS_MAX; i++) {
		sess *e = &d.s[i];
		if (!e->used || e->init == NULL)
			continue;
		reqs[n] = (hsm_wbuf){.p = e->init, .len = e->init_len, .cap = e->init_len, .err = CKR_OK};
		handles[n] = e->handle;
		kinds[n] = e->init_kind;
		n++;
		e->init = NULL;
		e->flushing = 1;
	}
	hsm_unlock(d.mu);

	for (int i = 0; i < n; i++) {
		hsm_wbuf *r = &reqs[i];
		CK_RV rv = CKR_OK;
		int idle = 0;
		uint8_t *reply = NULL;
		uint32_t len = 0;
		enum hsm_io io = hsm_exchange(&r, 1, &rv, &idle, &reply, &len, hsm_config_get()->timeout_ms);
		free(reply);
		free(r->p);
		if (io != HSM_IO_OK)
			rv = io == HSM_IO_BROKEN ? CKR_DEVICE_REMOVED : CKR_DEVICE_ERROR;
		hsm_lock(d.mu);
		sess *e = find(handles[i]);
		if (e != NULL) {
			e->flushing = 0;
			e->idle = 0;
			if (rv != CKR_OK) {
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
	if (d.mu == NULL)
		return CKR_OK;
	if (c->mutates) {
		hsm_lock(d.mu);
		d.mutating++;
		forget_accepted();
		hsm_unlock(d.mu);
		k->flushed = 1;
		flush();
	}
	if (!c->on_session) {
		hsm_lock(d.mu);
		k->gen = d.gen;
		hsm_unlock(d.mu);
		return CKR_OK;
	}
	for (;;) {
		hsm_lock(d.mu);
		k->gen = d.gen;
		sess *e = find(c->session);
		if (e == NULL) {
			hsm_unlock(d.mu);
			return CKR_OK;
		}
		if (e->flushing) {
			hsm_unlock(d.mu);
			nap();
			continue;
		}
		CK_RV rv = CKR_OK;
		if (c->starts || c->continues)
			e->idle = 0; /* the reply says again */
		if (e->init != NULL) {
			k->init = e->init;
			k->init_len = e->init_len;
			k->kind = e->init_kind;
			e->init = NULL;
			d.inflight++;
		} else if (e->failed != CKR_OK && (e->failed_kind & (c->continues | c->starts))) {
			/* Continued: report it. A new Init of its kind: the daemon
			 * has no operation of it; let the Init speak. */
			if (c->continues & e->failed_kind)
				rv = e->failed;
			e->failed = CKR_OK;
		}
		hsm_unlock(d.mu);
		return rv;
	}
}

void hsm_defer_end(hsm_call *c, hsm_carry *k, int replied, CK_RV init_rv)
{
	free(k->init);
	if (d.mu == NULL)
		return;
	hsm_lock(d.mu);
	if (k->init != NULL)
		d.inflight--;
	k->init = NULL;
	if (k->flushed)
		d.mutating--;
	if (c->mutates && !c->on_session) {
		/* C_CloseAllSessions, C_InitToken: the sessions' states go. */
		for (int i = 0; i < SESS_MAX; i++)
			if (d.s[i].init == NULL && !d.s[i].flushing)
				memset(&d.s[i], 0, sizeof d.s[i]);
	} else if (c->on_session) {
		sess *e = find(c->session);
		if (c->closes && replied && c->rv == CKR_OK) {
			if (e != NULL && e->init == NULL && !e->flushing)
				memset(e, 0, sizeof *e);
		} else if (replied) {
			if (e == NULL && c->idle)
				e = add(c->session);
			if (e != NULL) {
				e->idle = c->idle;
				if (init_rv != CKR_OK && !(c->continues & k->kind)) {
					e->failed = init_rv;
					e->failed_kind = k->kind;
				}
			}
		} else if (e != NULL) {
			e->idle = 0;
		}
	}
	/* An Init the daemon accepted, with nothing forgotten meanwhile. */
	if (c->starts && replied && c->rv == CKR_OK && k->gen == d.gen && c->shape.err == CKR_OK &&
	    c->shape.len > 0 && c->shape.len <= SHAPE_MAX)
		accept(c->starts, &c->shape);
	hsm_unlock(d.mu);
}
