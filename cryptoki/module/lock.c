/*
 * lock.c: the one kind of mutex the module uses (the connection pool's),
 * made of what CK_C_INITIALIZE_ARGS allows (PKCS#11 2.40 and 3.0, §5.4):
 *
 *   no callbacks, CKF_OS_LOCKING_OK or not   pthreads
 *   all four callbacks, CKF_OS_LOCKING_OK     pthreads (either is allowed)
 *   all four callbacks, no CKF_OS_LOCKING_OK  the application's callbacks
 *
 * Some but not all callbacks is CKR_ARGUMENTS_BAD (state.c checks it).
 * The mutex is never held across I/O.
 */
#include <pthread.h>
#include <stdlib.h>

#include "hsm.h"

struct hsm_mutex {
	int app;              /* made by the application's CreateMutex */
	void *handle;         /* the application's mutex */
	CK_DESTROYMUTEX destroy;
	CK_LOCKMUTEX lock;
	CK_UNLOCKMUTEX unlock;
	pthread_mutex_t mu;   /* ours */
};

static struct {
	int app;
	CK_CREATEMUTEX create;
	CK_DESTROYMUTEX destroy;
	CK_LOCKMUTEX lock;
	CK_UNLOCKMUTEX unlock;
} locking;

CK_RV hsm_locking_configure(const CK_C_INITIALIZE_ARGS *a)
{
	locking.app = 0;
	if (a != NULL && a->CreateMutex != NULL && !(a->flags & CKF_OS_LOCKING_OK)) {
		locking.app = 1;
		locking.create = a->CreateMutex;
		locking.destroy = a->DestroyMutex;
		locking.lock = a->LockMutex;
		locking.unlock = a->UnlockMutex;
	}
	return CKR_OK;
}

CK_RV hsm_mutex_new(hsm_mutex **out)
{
	hsm_mutex *m = calloc(1, sizeof *m);
	if (m == NULL)
		return CKR_HOST_MEMORY;
	if (locking.app) {
		CK_RV rv = locking.create(&m->handle);
		if (rv != CKR_OK) {
			free(m);
			return rv;
		}
		m->app = 1;
		m->destroy = locking.destroy;
		m->lock = locking.lock;
		m->unlock = locking.unlock;
	} else if (pthread_mutex_init(&m->mu, NULL) != 0) {
		free(m);
		return CKR_CANT_LOCK;
	}
	*out = m;
	return CKR_OK;
}

void hsm_mutex_free(hsm_mutex *m)
{
	if (m == NULL)
		return;
	if (m->app)
		m->destroy(m->handle);
	else
		pthread_mutex_destroy(&m->mu);
	free(m);
}

/* hsm_mutex_abandon drops a mutex a forked child inherited: it may be held
 * by a thread that does not exist here, so it is neither locked nor
 * destroyed, only forgotten. */
void hsm_mutex_abandon(hsm_mutex *m)
{
	free(m);
}

void hsm_lock(hsm_mutex *m)
{
	if (m->app)
		m->lock(m->handle);
	else
		pthread_mutex_lock(&m->mu);
}

void hsm_unlock(hsm_mutex *m)
{
	if (m->app)
		m->unlock(m->handle);
	else
		pthread_mutex_unlock(&m->mu);
}
