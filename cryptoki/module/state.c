/*
 * state.c: C_Initialize, C_Finalize and the library's life across fork().
 *
 * Loading the module does nothing: no constructor, no thread, no socket.
 * C_Initialize checks its arguments, draws the application id, reads where
 * the daemon is, and returns; it never connects. The first call that needs
 * the daemon dials it (pool.c).
 *
 * Fork: pthread_atfork handlers, registered once at the first
 * C_Initialize: the prepare handler takes init_mu, the tables' mutexes
 * and tls.c's (atfork_prepare), the child handler bumps fork_generation. Every entry
 * point compares it with the generation it was initialised in, so a child
 * answers CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize, which
 * closes the sockets the child inherited (close, never shutdown: the
 * parent still uses them) and starts afresh with a new application id. The
 * parent is unaffected.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "hsm.h"

/* init_mu serialises C_Initialize and C_Finalize. It is never held across
 * I/O, so the atfork prepare handler may take it to hand the child a mutex
 * in a known state. */
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
/* Whether atfork_prepare took the tables' mutexes: only those of the
 * initialisation of this process (a child's inherited ones stay locked). */
static int fork_locked;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static unsigned long fork_generation; /* bumped in each child */
static unsigned long init_generation; /* fork_generation at C_Initialize */
static int initialized;
static unsigned long epoch; /* bumped at C_Initialize and C_Finalize */
/* Threads inside hsm_gate_enter .. hsm_gate_leave: about to lock, or
 * holding, a table's mutex outside C_Initialize and C_Finalize. */
static unsigned long gate;
static uint8_t app_id[16];
static hsm_config config;

/* atfork_prepare takes init_mu, then the tables' mutexes in the order the
 * calls take them (held.c's before defer.c's; the pool's alone), then
 * tls.c's (taken under the pool's, when an idle connection is closed),
 * none of them ever held across I/O or while waiting for init_mu: the
 * child inherits the tables whole. tls.c's is a pthread mutex of the
 * process, taken whether or not this process initialised. A thread in the middle of changing one (a
 * result freed and its pointer not yet cleared) would leave the child's
 * C_Initialize freeing it again. */
static void atfork_prepare(void)
{
	pthread_mutex_lock(&init_mu);
	fork_locked = initialized && init_generation == __atomic_load_n(&fork_generation, __ATOMIC_SEQ_CST);
	if (fork_locked) {
		hsm_held_atfork_prepare();
		hsm_defer_atfork_prepare();
		hsm_pool_atfork_prepare();
	}
	hsm_tls_atfork_prepare();
}

static void atfork_parent(void)
{
	hsm_tls_atfork_parent();
	if (fork_locked) {
		hsm_pool_atfork_parent();
		hsm_defer_atfork_parent();
		hsm_held_atfork_parent();
	}
	pthread_mutex_unlock(&init_mu);
}

static void atfork_child(void)
{
	/* One thread exists here: none is inside the gate. */
	__atomic_add_fetch(&fork_generation, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&gate, 0, __ATOMIC_SEQ_CST);
	hsm_tls_atfork_child();
	hsm_pool_atfork_child();
	hsm_held_atfork_child();
	hsm_ring_atfork_child();
	pthread_mutex_unlock(&init_mu);
}

static void register_atfork(void)
{
	pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

CK_RV hsm_entry(void)
{
	if (!__atomic_load_n(&initialized, __ATOMIC_ACQUIRE))
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	if (__atomic_load_n(&init_generation, __ATOMIC_ACQUIRE) !=
	    __atomic_load_n(&fork_generation, __ATOMIC_ACQUIRE))
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	return CKR_OK;
}

unsigned long hsm_epoch(void)
{
	return __atomic_load_n(&epoch, __ATOMIC_ACQUIRE);
}

/* The gate pairs with C_Finalize's wait: the caller counts itself in
 * before it looks at the epoch, and C_Finalize looks at the count after
 * it moved the epoch on (both sequentially consistent), so either the
 * caller sees the new epoch and stays out, or C_Finalize sees the caller
 * and waits for it to leave before freeing the mutexes. */
int hsm_gate_enter(unsigned long e)
{
	__atomic_add_fetch(&gate, 1, __ATOMIC_SEQ_CST);
	if (hsm_entry() == CKR_OK && __atomic_load_n(&epoch, __ATOMIC_SEQ_CST) == e)
		return 1;
	__atomic_sub_fetch(&gate, 1, __ATOMIC_SEQ_CST);
	return 0;
}

void hsm_gate_leave(void)
{
	__atomic_sub_fetch(&gate, 1, __ATOMIC_SEQ_CST);
}

/* gate_drain waits until no thread is inside the gate. Those inside hold
 * a table's mutex or wait for one, never across I/O: a short wait. */
static void gate_drain(void)
{
	long us = 20;
	while (__atomic_load_n(&gate, __ATOMIC_SEQ_CST) != 0) {
		struct timespec ts = {0, us * 1000};
		nanosleep(&ts, NULL);
		if (us < 1000)
			us *= 2;
	}
}

const uint8_t *hsm_app_id(void)
{
	return app_id;
}

const hsm_config *hsm_config_get(void)
{
	return &config;
}

static int read_urandom(uint8_t *p, size_t n)
{
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	while (n > 0) {
		ssize_t k = read(fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			close(fd);
			return -1;
		}
		p += k;
		n -= (size_t)k;
	}
	close(fd);
	return 0;
}

static CK_RV draw_app_id(uint8_t *id, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t k = getrandom(id + got, n - got, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return read_urandom(id, n) == 0 ? CKR_OK : CKR_FUNCTION_FAILED;
		got += (size_t)k;
	}
	return CKR_OK;
}

/* check_init_args applies PKCS#11's rules for CK_C_INITIALIZE_ARGS. */
static CK_RV check_init_args(const CK_C_INITIALIZE_ARGS *a)
{
	if (a == NULL)
		return CKR_OK;
	if (a->pReserved != NULL)
		return CKR_ARGUMENTS_BAD;
	int supplied = (a->CreateMutex != NULL) + (a->DestroyMutex != NULL) +
		       (a->LockMutex != NULL) + (a->UnlockMutex != NULL);
	if (supplied != 0 && supplied != 4)
		return CKR_ARGUMENTS_BAD;
	return CKR_OK;
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
	const CK_C_INITIALIZE_ARGS *args = pInitArgs;
	CK_RV rv = check_init_args(args);
	if (rv != CKR_OK)
		return rv;

	pthread_mutex_lock(&init_mu);
	pthread_once(&atfork_once, register_atfork);

	int stale = initialized && init_generation != __atomic_load_n(&fork_generation, __ATOMIC_SEQ_CST);
	if (initialized && !stale) {
		pthread_mutex_unlock(&init_mu);
		return CKR_CRYPTOKI_ALREADY_INITIALIZED;
	}
	if (stale) {
		/* A forked child: the parent's connections are not ours. */
		hsm_pool_forget_inherited();
		hsm_defer_forget_inherited();
		hsm_held_forget_inherited();
		__atomic_store_n(&initialized, 0, __ATOMIC_RELEASE);
	}

	uint8_t id[16];
	rv = draw_app_id(id, sizeof id);
	if (rv == CKR_OK)
		rv = hsm_locking_configure(args);
	if (rv == CKR_OK)
		rv = hsm_pool_init();
	if (rv == CKR_OK) {
		rv = hsm_defer_init();
		if (rv != CKR_OK)
			hsm_pool_finalize(); /* its mutex, made above, is not leaked */
	}
	if (rv == CKR_OK) {
		rv = hsm_held_init();
		if (rv != CKR_OK) {
			hsm_defer_finalize();
			hsm_pool_finalize();
		}
	}
	if (rv != CKR_OK) {
		pthread_mutex_unlock(&init_mu);
		return rv;
	}
	hsm_conn_init();
	hsm_stats_init();
	memcpy(app_id, id, sizeof app_id);
	hsm_config_load(&config);
	__atomic_add_fetch(&epoch, 1, __ATOMIC_SEQ_CST);
	__atomic_store_n(&init_generation, __atomic_load_n(&fork_generation, __ATOMIC_SEQ_CST),
			 __ATOMIC_RELEASE);
	__atomic_store_n(&initialized, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&init_mu);
	return CKR_OK;
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
	if (pReserved != NULL)
		return CKR_ARGUMENTS_BAD;

	pthread_mutex_lock(&init_mu);
	if (!initialized) {
		pthread_mutex_unlock(&init_mu);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	if (init_generation != __atomic_load_n(&fork_generation, __ATOMIC_SEQ_CST)) {
		/* A forked child that never initialised: drop what it inherited. */
		hsm_pool_forget_inherited();
		hsm_defer_forget_inherited();
		hsm_held_forget_inherited();
		hsm_tls_finalize();
		__atomic_store_n(&initialized, 0, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&init_mu);
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	}
	/* New calls fail from here; calls in flight see the epoch change and
	 * give up (a blocked C_WaitForSlotEvent among them). One that got
	 * past the gate before may be about to lock a table's mutex: the
	 * mutexes are freed only once it has let go. */
	__atomic_store_n(&initialized, 0, __ATOMIC_RELEASE);
	__atomic_add_fetch(&epoch, 1, __ATOMIC_SEQ_CST);
	gate_drain();
	hsm_pool_finalize();
	hsm_held_finalize();
	hsm_defer_finalize();
	hsm_stats_report();
	hsm_tls_finalize();
	memset(app_id, 0, sizeof app_id);
	pthread_mutex_unlock(&init_mu);
	return CKR_OK;
}
