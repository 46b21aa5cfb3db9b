/*
 * heldfin.c: the "finrace" section of e2e-held (held.c): a
 * C_WaitForSlotEvent that C_Finalize overtakes.
 *
 * PKCS#11 lets one thread call C_Finalize while another waits in
 * C_WaitForSlotEvent, which then returns CKR_CRYPTOKI_NOT_INITIALIZED.
 * The waiting thread W may be about to lock one of the module's mutexes
 * when C_Finalize destroys them: it must get CKR_CRYPTOKI_NOT_INITIALIZED
 * or its normal result (CKR_NO_EVENT), and the module must never use a
 * mutex after destroying it, nor call the application's mutex callbacks
 * after C_Finalize returned.
 *
 * The module is initialised with the application's mutex callbacks (no
 * CKF_OS_LOCKING_OK). W pauses in the LockMutex callback of a chosen lock
 * of its call, before taking the mutex: the pool's (the first lock it
 * takes), or, on the dial that finds the application fresh, defer.c's
 * (the second). Thread F then calls C_Finalize. W goes on once F has
 * destroyed the mutex W waits for, which a module that does not wait for
 * W does at once, or once F sleeps waiting for W (its /proc syscall file
 * says so): nothing is timed. The callbacks remember destroyed mutexes
 * (freed only at the section's end), so a use after DestroyMutex is a
 * failed check here, and with ASan the module's own use after free
 * aborts the program.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "held.h"

#define MUTEX_MAX 16

typedef struct {
	pthread_mutex_t m;
	int destroyed;
} tmutex;

static tmutex *made[MUTEX_MAX];
static int nmade, ndestroyed;
static int misused;   /* a callback on a destroyed mutex */
static int late;      /* a callback after C_Finalize returned */
static int finalized; /* F's C_Finalize returned */

/* W: which of its locks pauses (1: the first), and the mutex it waits for. */
static __thread int hold_at;
static tmutex *waiting_on;
static int paused, released;

static void nap(void)
{
	struct timespec ts = {0, 200 * 1000};
	nanosleep(&ts, NULL);
}

static void note_call(const tmutex *t)
{
	if (__atomic_load_n(&finalized, __ATOMIC_SEQ_CST))
		__atomic_store_n(&late, 1, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&t->destroyed, __ATOMIC_SEQ_CST))
		__atomic_store_n(&misused, 1, __ATOMIC_SEQ_CST);
}

static CK_RV create_mutex(void **m)
{
	tmutex *t = calloc(1, sizeof *t);
	if (t == NULL)
		return CKR_HOST_MEMORY;
	pthread_mutex_init(&t->m, NULL);
	int i = __atomic_fetch_add(&nmade, 1, __ATOMIC_SEQ_CST);
	if (i >= MUTEX_MAX) {
		free(t);
		return CKR_HOST_MEMORY;
	}
	made[i] = t;
	*m = t;
	return CKR_OK;
}

static CK_RV destroy_mutex(void *m)
{
	tmutex *t = m;
	note_call(t);
	pthread_mutex_destroy(&t->m);
	__atomic_store_n(&t->destroyed, 1, __ATOMIC_SEQ_CST);
	__atomic_add_fetch(&ndestroyed, 1, __ATOMIC_SEQ_CST);
	return CKR_OK; /* freed at the section's end */
}

static CK_RV lock_mutex(void *m)
{
	tmutex *t = m;
	if (hold_at > 0 && --hold_at == 0) {
		__atomic_store_n(&waiting_on, t, __ATOMIC_SEQ_CST);
		__atomic_store_n(&paused, 1, __ATOMIC_SEQ_CST);
		while (!__atomic_load_n(&released, __ATOMIC_SEQ_CST))
			nap();
	}
	note_call(t);
	if (!__atomic_load_n(&t->destroyed, __ATOMIC_SEQ_CST))
		pthread_mutex_lock(&t->m);
	return CKR_OK;
}

static CK_RV unlock_mutex(void *m)
{
	tmutex *t = m;
	note_call(t);
	if (!__atomic_load_n(&t->destroyed, __ATOMIC_SEQ_CST))
		pthread_mutex_unlock(&t->m);
	return CKR_OK;
}

static CK_C_INITIALIZE_ARGS fin_ia = {.CreateMutex = create_mutex,
				      .DestroyMutex = destroy_mutex,
				      .LockMutex = lock_mutex,
				      .UnlockMutex = unlock_mutex};

/* in_sleep says whether thread tid sleeps in nanosleep. */
static int in_sleep(pid_t tid)
{
	long nr = ctest_sleeping_in((int)tid);
	return nr == SYS_clock_nanosleep
#ifdef SYS_nanosleep
	       || nr == SYS_nanosleep
#endif
		;
}

static int w_at;
static CK_RV w_rv, f_rv;
static pid_t f_tid;
static int f_started;

static void *waiter(void *arg)
{
	(void)arg;
	CK_SLOT_ID s = 0;
	hold_at = w_at;
	w_rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL);
	hold_at = 0;
	return NULL;
}

static void *finalizer(void *arg)
{
	(void)arg;
	__atomic_store_n(&f_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	__atomic_store_n(&f_started, 1, __ATOMIC_SEQ_CST);
	f_rv = f->C_Finalize(NULL);
	__atomic_store_n(&finalized, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* race runs one overtaking: W pauses in its at-th lock. */
static void race(int at, const char *what)
{
	nmade = ndestroyed = misused = late = finalized = paused = released = f_started = 0;
	waiting_on = NULL;
	w_at = at;
	if (!OK(f->C_Initialize(&fin_ia)))
		return;
	pthread_t w, fin;
	pthread_create(&w, NULL, waiter, NULL);
	while (!__atomic_load_n(&paused, __ATOMIC_SEQ_CST))
		nap();
	pthread_create(&fin, NULL, finalizer, NULL);
	for (;;) {
		tmutex *t = __atomic_load_n(&waiting_on, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&t->destroyed, __ATOMIC_SEQ_CST))
			break; /* F went on without W */
		if (__atomic_load_n(&f_started, __ATOMIC_SEQ_CST) && in_sleep(__atomic_load_n(&f_tid, __ATOMIC_SEQ_CST)))
			break; /* F waits for W */
		nap();
	}
	__atomic_store_n(&released, 1, __ATOMIC_SEQ_CST);
	pthread_join(w, NULL);
	pthread_join(fin, NULL);
	EXPECT(f_rv, CKR_OK);
	CHECK(w_rv == CKR_CRYPTOKI_NOT_INITIALIZED || w_rv == CKR_NO_EVENT,
	      "%s: C_WaitForSlotEvent overtaken by C_Finalize: rv 0x%lx", what, (unsigned long)w_rv);
	CHECK(!misused, "%s: the module used a mutex after DestroyMutex", what);
	CHECK(!late, "%s: the module called a mutex callback after C_Finalize returned", what);
	CHECK(ndestroyed == nmade, "%s: %d mutexes made, %d destroyed", what, nmade, ndestroyed);
	for (int i = 0; i < nmade && i < MUTEX_MAX; i++) {
		free(made[i]);
		made[i] = NULL;
	}
}

void test_finrace(void)
{
	begin("finrace");
	race(1, "the pool's mutex");
	/* A fresh initialisation: its first dial finds the application
	 * fresh, and defer.c's hook takes its mutex (the second lock). */
	race(2, "defer.c's mutex, on a fresh dial");
	end();
}
