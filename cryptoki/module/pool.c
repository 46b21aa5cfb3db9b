/*
 * pool.c: a small pool of connections to the daemon, all carrying the same
 * application id, so that calls from many threads proceed in parallel.
 *
 * The pool is a fixed array of HSM_POOL_MAX slots. A call takes an idle
 * connection, or a free slot into which it dials a new one, and gives it
 * back when its reply is read; when all slots are busy it waits a little and
 * looks again. The mutex guards only the slots' states: it is never held
 * while dialling, sending or receiving, and since it may be the
 * application's (CK_C_INITIALIZE_ARGS callbacks, which have no condition
 * variable) waiting is a short sleep, not a condition wait.
 *
 * A connection that broke, or whose reply did not decode, is closed and its
 * slot freed; the next call dials again. C_Finalize closes the idle ones and
 * bumps the epoch; busy ones are closed by their callers when they come
 * back to a pool of another epoch. A forked child forgets everything it
 * inherited (hsm_pool_forget_inherited): it closes the descriptors, never
 * shuts them down, because the parent's connections are the same sockets.
 *
 * The pool never calls up into exchange.c, defer.c or call.c: when a dial
 * finds that the daemon holds nothing of this application, it runs the
 * hook registered with hsm_pool_on_fresh (defer.c's drops the held Inits).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "hsm.h"

#define HSM_POOL_MAX 32
#define HSM_FRESH_NS (20LL * 1000 * 1000)

static long long mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

enum { SLOT_FREE, SLOT_IDLE, SLOT_BUSY };

static struct {
	hsm_mutex *mu;
	int ready;
	unsigned long epoch;
	hsm_conn slot[HSM_POOL_MAX];
} pool;

/* A slot's state is read and written atomically: a busy slot belongs to its
 * caller alone, who may free it without the mutex when it comes back to a
 * pool of a later epoch (its mutex may be gone). Under the mutex, others
 * only move slots between free, idle and busy. */
static int state(const hsm_conn *c)
{
	return __atomic_load_n(&c->state, __ATOMIC_ACQUIRE);
}

static void set_state(hsm_conn *c, int s)
{
	__atomic_store_n(&c->state, s, __ATOMIC_RELEASE);
}

CK_RV hsm_pool_init(void)
{
	hsm_mutex *mu;
	CK_RV rv = hsm_mutex_new(&mu);
	if (rv != CKR_OK)
		return rv;
	if (!pool.ready) {
		for (int i = 0; i < HSM_POOL_MAX; i++) {
			pool.slot[i].fd = -1;
			set_state(&pool.slot[i], SLOT_FREE);
		}
		pool.ready = 1;
	}
	pool.mu = mu;
	/* The epoch C_Initialize is starting (state.c bumps it next). */
	__atomic_store_n(&pool.epoch, hsm_epoch() + 1, __ATOMIC_RELEASE);
	return CKR_OK;
}

void hsm_pool_finalize(void)
{
	hsm_lock(pool.mu);
	__atomic_store_n(&pool.epoch, hsm_epoch(), __ATOMIC_RELEASE);
	for (int i = 0; i < HSM_POOL_MAX; i++) {
		hsm_conn *c = &pool.slot[i];
		if (state(c) == SLOT_IDLE) {
			hsm_conn_close(c->fd);
			c->fd = -1;
			set_state(c, SLOT_FREE);
		}
	}
	hsm_unlock(pool.mu);
	/* No thread is inside the gate (state.c waited): calls still in
	 * flight (a C_WaitForSlotEvent) free their slots without it. */
	hsm_mutex_free(pool.mu);
	pool.mu = NULL;
}

void hsm_pool_forget_inherited(void)
{
	/* The child has one thread; the mutex may be held by a thread that
	 * only existed in the parent, so it is abandoned, not taken. */
	for (int i = 0; i < HSM_POOL_MAX && pool.ready; i++) {
		if (pool.slot[i].fd >= 0)
			hsm_conn_forget(pool.slot[i].fd);
		pool.slot[i].fd = -1;
		set_state(&pool.slot[i], SLOT_FREE);
	}
	if (pool.mu != NULL)
		hsm_mutex_abandon(pool.mu);
	pool.mu = NULL;
}

/* dial_mu serialises dials with what their hellos say: a connection that
 * joins the daemon's application (hello status 3) never enters the pool
 * before the dial that found the application fresh (status 0) has run the
 * fresh hook, which drops the deferred Inits of the old one (defer.c).
 * Dials are rare, and all go to the same daemon. A pthread mutex, reset in
 * a forked child, since it is held across the dial, where no application
 * callback may be. */
static pthread_mutex_t dial_mu = PTHREAD_MUTEX_INITIALIZER;
/* Dials that found no daemon. A thread that queued for dial_mu while one
 * failed fails too, at once, rather than waiting out a hello timeout of
 * its own behind each one before it. */
static unsigned long dial_failures;

/* on_fresh is run under dial_mu by the dial whose hello found the
 * application fresh, with the epoch the dial began in (the hook does
 * nothing once C_Finalize has ended it). Set at C_Initialize
 * (hsm_defer_init) and kept. */
static void (*on_fresh)(unsigned long epoch);

void hsm_pool_on_fresh(void (*fn)(unsigned long epoch))
{
	__atomic_store_n(&on_fresh, fn, __ATOMIC_RELEASE);
}

void hsm_pool_atfork_prepare(void)
{
	if (pool.mu != NULL)
		hsm_lock(pool.mu);
}

void hsm_pool_atfork_parent(void)
{
	if (pool.mu != NULL)
		hsm_unlock(pool.mu);
}

void hsm_pool_atfork_child(void)
{
	pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
	dial_mu = fresh;
}

static void nap(int *us)
{
	struct timespec ts = {0, (long)*us * 1000};
	nanosleep(&ts, NULL);
	if (*us < 5000)
		*us *= 2;
}

enum hsm_io hsm_pool_get(hsm_conn **out)
{
	unsigned long epoch = hsm_epoch();
	int us = 50;

	for (;;) {
		hsm_conn *idle = NULL, *fresh = NULL;
		/* Inside the gate, C_Finalize does not free the mutex. */
		if (!hsm_gate_enter(epoch))
			return HSM_IO_FINALIZED;
		hsm_mutex *mu = pool.mu;
		hsm_lock(mu);
		/* C_Finalize may have begun since the gate: then it closes
		 * the idle connections, and no slot is taken. */
		int gone = hsm_epoch() != epoch;
		for (int i = 0; i < HSM_POOL_MAX && idle == NULL && !gone; i++) {
			int s = state(&pool.slot[i]);
			if (s == SLOT_IDLE)
				idle = &pool.slot[i];
			else if (s == SLOT_FREE && fresh == NULL)
				fresh = &pool.slot[i];
		}
		hsm_conn *c = idle ? idle : fresh;
		if (c != NULL) {
			c->epoch = epoch;
			set_state(c, SLOT_BUSY);
		}
		hsm_unlock(mu);
		hsm_gate_leave();

		if (gone)
			return HSM_IO_FINALIZED;
		if (c == NULL) {
			nap(&us); /* every slot busy */
			continue;
		}
		if (idle != NULL) {
			/* The daemon may have closed it since (a restart): then it
			 * is stale, and a fresh dial serves this call instead. A
			 * connection idle for less than HSM_FRESH_NS is not
			 * checked: no daemon stops and starts again that fast, so
			 * if it is broken the daemon is down and the call fails as
			 * it would on a fresh dial (CKR_DEVICE_REMOVED). That
			 * spares a back-to-back call, such as C_Sign after
			 * C_SignInit, a system call. */
			if (mono_ns() - c->idle_since < HSM_FRESH_NS || !hsm_conn_stale(c->fd)) {
				*out = c;
				return HSM_IO_OK;
			}
			hsm_pool_put(c, 0);
			continue;
		}
		int fd, app_fresh = 0, version = 0;
		unsigned long failures = __atomic_load_n(&dial_failures, __ATOMIC_ACQUIRE);
		pthread_mutex_lock(&dial_mu);
		if (__atomic_load_n(&dial_failures, __ATOMIC_ACQUIRE) != failures) {
			pthread_mutex_unlock(&dial_mu);
			hsm_pool_put(c, 0);
			return HSM_IO_UNAVAILABLE;
		}
		enum hsm_io io = hsm_conn_dial(&fd, &app_fresh, &version);
		if (io == HSM_IO_UNAVAILABLE)
			__atomic_add_fetch(&dial_failures, 1, __ATOMIC_RELEASE);
		/* Not for a C_WaitForSlotEvent that C_Finalize overtook: the
		 * hook passes its own gate with epoch. */
		void (*hook)(unsigned long) = __atomic_load_n(&on_fresh, __ATOMIC_ACQUIRE);
		if (io == HSM_IO_OK && app_fresh && hook != NULL)
			hook(epoch);
		pthread_mutex_unlock(&dial_mu);
		if (io != HSM_IO_OK) {
			hsm_pool_put(c, 0);
			return io;
		}
		c->fd = fd;
		c->next_id = 1;
		c->version = version;
		*out = c;
		return HSM_IO_OK;
	}
}

void hsm_pool_put(hsm_conn *c, int reusable)
{
	/* A slot of an earlier epoch (C_Finalize ran meanwhile) is freed
	 * without the mutex, which may be gone; inside the gate it stays. */
	if (!reusable || !hsm_gate_enter(c->epoch)) {
		if (c->fd >= 0)
			hsm_conn_close(c->fd);
		c->fd = -1;
		set_state(c, SLOT_FREE);
		return;
	}
	/* Becoming idle is done under the mutex, so that C_Finalize, which
	 * closes idle connections under it, cannot miss this one: under it,
	 * the pool's epoch says whether C_Finalize has been. */
	hsm_mutex *mu = pool.mu;
	hsm_lock(mu);
	if (c->epoch == __atomic_load_n(&pool.epoch, __ATOMIC_ACQUIRE)) {
		c->idle_since = mono_ns();
		set_state(c, SLOT_IDLE);
	} else {
		hsm_conn_close(c->fd);
		c->fd = -1;
		set_state(c, SLOT_FREE);
	}
	hsm_unlock(mu);
	hsm_gate_leave();
}
