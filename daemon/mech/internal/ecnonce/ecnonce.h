/* ecnonce.h: ECDSA nonces made ahead by an idle-priority thread. */
#ifndef HSMEMU_ECNONCE_H
#define HSMEMU_ECNONCE_H

#include <stddef.h>

/* The largest scalar: P-521's order is 66 bytes. */
#define EN_MAX 66

typedef struct en_pool en_pool;

/* en_start makes a pool of cap nonces on curve nid (an OpenSSL NID) and
 * starts its filler thread, which runs under SCHED_IDLE (or at nice 19
 * where that is refused) and refills the pool whenever it falls below
 * low. *size is set to the byte length of the curve's order. NULL on
 * failure. */
en_pool *en_start(int nid, unsigned cap, unsigned low, int *size);
/* en_take copies one nonce out, k^-1 mod n and r, each size bytes, and
 * wipes its slot: 1 when it had one, 0 when the pool was empty. Callers
 * must not take concurrently (the Go side holds a mutex); the filler runs
 * beside them without a lock. */
int en_take(en_pool *p, unsigned char *kinv, unsigned char *r);
/* en_len is how many nonces the pool holds. */
unsigned en_len(en_pool *p);
/* en_policy is the scheduling the filler got: 1 SCHED_IDLE, 2 nice 19,
 * 0 neither (yet); -1 once OpenSSL failed it and it ended. */
int en_policy(en_pool *p);
/* en_made counts the nonces the filler made. */
unsigned long en_made(en_pool *p);
/* en_stop ends the filler; the pool is wiped and freed once the filler
 * has let go of it. The caller must not use p again. */
void en_stop(en_pool *p);
/* en_fillers counts the filler threads alive, every pool together: a
 * thread is counted out as it ends, before its last frees. */
int en_fillers(void);

#endif
