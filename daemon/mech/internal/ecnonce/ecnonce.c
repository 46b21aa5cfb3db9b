/*
 * ecnonce.c: see ecnonce.h and ecnonce.go for why.
 *
 * The pool is a ring with one producer, the filler thread, and one
 * consumer at a time (the Go side's mutex). They share no lock: the filler
 * runs at idle priority, and a lock it held while the scheduler left it
 * waiting would hold every signer up with it. The filler writes a slot,
 * then moves tail on; the consumer copies a slot out, wipes it, then moves
 * head on. The nonces are OpenSSL's, made as its own ECDSA makes them
 * (make_one), constant-time in k.
 *
 * Nor does the filler share OpenSSL's locks with the rest of the daemon:
 * each pool has a library context of its own, so its random generator
 * and the generator's locks are its own. In the default context every
 * draw takes the shared generator's lock, and a thread at idle priority
 * preempted holding it stalled every other user of OpenSSL's random
 * numbers (the RSA blinding of internal/rsaraw) for as long as the cores
 * stayed busy: hundreds of milliseconds.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED /* ECDSA_sign_setup: see make_one */
#include <limits.h>
#include <linux/futex.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ecnonce.h"

struct en_pool {
	OSSL_LIB_CTX *lc; /* the pool's own: see above */
	EC_GROUP *g;
	int size;
	unsigned cap, low;
	/* slots: cap slots of 2*size bytes, k^-1 then r. */
	unsigned char *slots;
	size_t map_len;
	/* head: the next slot to take (the consumer's); tail: the next to
	 * fill, and made, the nonces made (the filler's); on lines of their
	 * own. */
	alignas(64) atomic_ulong head;
	alignas(64) atomic_ulong tail;
	atomic_ulong made;
	alignas(64) atomic_uint wake; /* futex word the filler sleeps on */
	atomic_int sleeping;          /* the filler is (about to be) asleep */
	atomic_int stop;
	atomic_int refs;   /* the filler's and en_stop's: the last frees */
	atomic_int policy; /* 1 SCHED_IDLE, 2 nice 19, -1 OpenSSL failed */
};

/* fillers counts the filler threads alive, every pool together. */
static atomic_int fillers;

int en_fillers(void) { return atomic_load(&fillers); }

static long futex(atomic_uint *w, int op, unsigned val)
{
	return syscall(SYS_futex, (unsigned *)w, op, val, NULL, NULL, 0);
}

/* wake_filler wakes the filler if it sleeps, once: the signer that
 * clears sleeping makes the one system call, and the others, while an
 * idle-priority filler waits for a core, make none. */
static void wake_filler(en_pool *p)
{
	if (atomic_load(&p->sleeping) && atomic_exchange(&p->sleeping, 0)) {
		atomic_fetch_add(&p->wake, 1);
		futex(&p->wake, FUTEX_WAKE_PRIVATE, 1);
	}
}

/*
 * make_one writes one nonce into s: 1, or 0 when OpenSSL failed.
 * ECDSA_sign_setup is OpenSSL's own first half of a signature, published
 * for this use: k from its private DRBG (seeded by the kernel), r = (k·G).x
 * mod n, and k^-1 by the group's constant-time inversion modulo the order
 * (a dedicated one on P-256). It wants a key that could sign, and uses its
 * private scalar only to derive k from a digest, which it is not given
 * here: the key is a throwaway the filler makes for its curve.
 */
static int make_one(en_pool *p, EC_KEY *key, BN_CTX *ctx, unsigned char *s)
{
	BIGNUM *kinv = NULL, *r = NULL;
	int ok = ECDSA_sign_setup(key, ctx, &kinv, &r) && BN_bn2binpad(kinv, s, p->size) == p->size &&
	         BN_bn2binpad(r, s + p->size, p->size) == p->size;
	BN_clear_free(kinv);
	BN_free(r);
	return ok;
}

/* burn_stack overwrites the stack below its caller, where make_one and
 * OpenSSL left k and k^-1 in their frames (and the dynamic linker's
 * resolver, the first time a function was bound, in the registers it
 * saved): the thread does it before it sleeps and before it ends, since a
 * sleeping filler may not run again for a long time and a thread's stack
 * is kept for the next thread without being cleared. */
static void __attribute__((noinline)) burn_stack(void)
{
	unsigned char buf[32 * 1024];
	OPENSSL_cleanse(buf, sizeof buf);
	__asm__ volatile("" : : "r"(buf) : "memory");
}

static void pool_free(en_pool *p)
{
	OPENSSL_cleanse(p->slots, p->map_len);
	munmap(p->slots, p->map_len);
	EC_GROUP_free(p->g);
	OSSL_LIB_CTX_free(p->lc);
	free(p);
}

/*
 * filler fills the ring up, sleeps until a signer finds it below low, and
 * so on until en_stop. It runs under SCHED_IDLE: the scheduler gives it a
 * core only when no other thread wants one, and takes the core back as
 * soon as one does, so the nonces it makes cost nothing but idle time. A
 * filler at normal priority competes with the connections' threads when
 * the cores are busy, and the scheduler then gives it slices of
 * milliseconds while a woken connection waits. When the cores stay busy
 * the ring runs dry and signers make their own nonces, as they would
 * without it. The thread frees the pool when it ends.
 */
static void *filler(void *arg)
{
	en_pool *p = arg;
	struct sched_param sp = {0};
	if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) == 0)
		atomic_store(&p->policy, 1);
	else if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19) == 0)
		atomic_store(&p->policy, 2);

	/* Bind what the loop calls once secrets are about, before there are
	 * any: a function's first call goes through the dynamic linker's
	 * resolver, which saves the registers, with whatever of k they
	 * hold, on the stack below the part burn_stack reaches. */
	burn_stack();
	futex(&p->wake, FUTEX_WAKE_PRIVATE, 0);

	BN_CTX *ctx = BN_CTX_new_ex(p->lc);
	EC_KEY *key = EC_KEY_new_ex(p->lc, NULL);
	if (!ctx || !key || !EC_KEY_set_group(key, p->g) || !EC_KEY_generate_key(key)) {
		atomic_store(&p->policy, -1);
		goto out;
	}

	while (!atomic_load(&p->stop)) {
		unsigned long t = atomic_load_explicit(&p->tail, memory_order_relaxed);
		if (t - atomic_load(&p->head) >= p->cap) {
			/* Full. Say so, look again (a signer that took one
			 * meanwhile either sees sleeping or is seen here), and
			 * wait for a wake that comes after w. */
			unsigned w = atomic_load(&p->wake);
			atomic_store(&p->sleeping, 1);
			if (t - atomic_load(&p->head) >= p->cap && !atomic_load(&p->stop)) {
				burn_stack();
				futex(&p->wake, FUTEX_WAIT_PRIVATE, w);
			}
			atomic_store(&p->sleeping, 0);
			continue;
		}
		if (!make_one(p, key, ctx, p->slots + (t % p->cap) * 2 * (size_t)p->size)) {
			atomic_store(&p->policy, -1);
			break; /* OpenSSL failed: signers make their own */
		}
		atomic_store_explicit(&p->tail, t + 1, memory_order_release);
		atomic_fetch_add_explicit(&p->made, 1, memory_order_relaxed);
	}
out:
	EC_KEY_free(key);
	BN_CTX_free(ctx);
	OPENSSL_thread_stop_ex(p->lc); /* the thread's generators in lc */
	burn_stack();
	/* Counted out before the last frees below, which are the pool's,
	 * not the thread's OpenSSL state. */
	atomic_fetch_sub(&fillers, 1);
	if (atomic_fetch_sub(&p->refs, 1) == 1)
		pool_free(p);
	return NULL;
}

en_pool *en_start(int nid, unsigned cap, unsigned low, int *size)
{
	if (cap == 0 || low > cap)
		return NULL;
	en_pool *p = aligned_alloc(64, (sizeof *p + 63) / 64 * 64);
	if (!p)
		return NULL;
	memset(p, 0, sizeof *p);
	p->lc = OSSL_LIB_CTX_new();
	p->g = p->lc ? EC_GROUP_new_by_curve_name_ex(p->lc, NULL, nid) : NULL;
	if (!p->g)
		goto fail;
	p->size = (BN_num_bits(EC_GROUP_get0_order(p->g)) + 7) / 8;
	if (p->size > EN_MAX)
		goto fail;
	p->cap = cap;
	p->low = low;
	atomic_init(&p->refs, 2);
	/* The slots hold secrets: their own mapping, left out of core dumps
	 * (the daemon makes none, but a library may), locked in memory where
	 * the limit allows (32 KiB on P-256). */
	p->map_len = (size_t)cap * 2 * (size_t)p->size;
	p->slots = mmap(NULL, p->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p->slots == MAP_FAILED) {
		p->slots = NULL;
		goto fail;
	}
	madvise(p->slots, p->map_len, MADV_DONTDUMP);
	mlock(p->slots, p->map_len);

	/* The thread takes no signals: the kernel may pick any thread of the
	 * process for one, and the handler would then run at idle priority
	 * (and save registers on the filler's stack). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_t attr;
	pthread_t th;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	atomic_fetch_add(&fillers, 1);
	int err = pthread_create(&th, &attr, filler, p);
	pthread_attr_destroy(&attr);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (err != 0) {
		atomic_fetch_sub(&fillers, 1);
		pool_free(p);
		return NULL;
	}
	*size = p->size;
	return p;

fail:
	if (p->slots)
		munmap(p->slots, p->map_len);
	EC_GROUP_free(p->g);
	OSSL_LIB_CTX_free(p->lc);
	free(p);
	return NULL;
}

int en_take(en_pool *p, unsigned char *kinv, unsigned char *r)
{
	unsigned long h = atomic_load_explicit(&p->head, memory_order_relaxed);
	unsigned long t = atomic_load_explicit(&p->tail, memory_order_acquire);
	if (h == t)
		return 0;
	unsigned char *s = p->slots + (h % p->cap) * 2 * (size_t)p->size;
	memcpy(kinv, s, p->size);
	memcpy(r, s + p->size, p->size);
	OPENSSL_cleanse(s, 2 * (size_t)p->size);
	atomic_store(&p->head, h + 1);
	if (t - (h + 1) < p->low)
		wake_filler(p);
	return 1;
}

unsigned en_len(en_pool *p)
{
	return (unsigned)(atomic_load(&p->tail) - atomic_load(&p->head));
}

int en_policy(en_pool *p) { return atomic_load(&p->policy); }

unsigned long en_made(en_pool *p) { return atomic_load(&p->made); }

/*
 * en_stop does not wait for the filler: at idle priority on busy cores it
 * may not run for a while. It asks the filler to end, and the pool is
 * freed by whichever of the two lets go of it last.
 */
void en_stop(en_pool *p)
{
	atomic_store(&p->stop, 1);
	atomic_fetch_add(&p->wake, 1);
	futex(&p->wake, FUTEX_WAKE_PRIVATE, INT_MAX);
	if (atomic_fetch_sub(&p->refs, 1) == 1)
		pool_free(p);
}
