/*
 * held.c: results the daemon gave ahead of the follow-up call
 * (docs/protocol.md, "Results ahead of the follow-up call").
 *
 * Most applications call C_Sign, C_Encrypt, C_WrapKey and the like twice:
 * first with a NULL buffer for the length, then with a buffer. Each call
 * was a round trip. For the calls of calls.Prefetches the daemon keeps
 * what a size query measured and gives exactly that to the call that
 * follows with the same input (C_WrapKey keeps nothing, and its
 * follow-up repeats its arguments), so the module asks, with the NULL
 * buffer, for the whole result (a prefetch), keeps it here, answers the
 * length, and serves the follow-up itself: the result, or
 * CKR_BUFFER_TOO_SMALL for a short buffer, or the length again.
 *
 * Only a follow-up that brings the same arguments, the input included,
 * is served: a size query returns a length and nothing else (PKCS#11
 * 5.2), so a follow-up with other input must get the output of that
 * input. The held result is matched by the call, the session, and the
 * length and SHA-256 of every other argument before the output; a
 * follow-up that does not match drops it, and goes to the daemon, which
 * performs the operation on the new input from its Init's state.
 *
 * The daemon stays the truth. It still holds the operation and its
 * output, so whatever this file forgets, the next call asks the daemon and
 * gets the same answer: a held result is only a copy. So it is forgotten
 * (and wiped) whenever anything else may have moved the daemon's state:
 * any call on its session that goes to the daemon, any mutating call
 * (calls.Role.Mutates) at its start and its end, a daemon that holds
 * nothing of the application any more, C_Finalize, and in a forked
 * child. It is kept only from a prefetch that was alone on its session
 * from start to reply, so two threads sharing a session see what one
 * call after the other would, and that no mutating call overlapped (the
 * daemon may have answered it before the change, which the follow-up,
 * after the mutating call returned, must see).
 *
 * When the follow-up takes the result, the operation is over for the
 * application but not yet in the daemon: the C_SessionCancel that ends it
 * travels ahead of the session's next frame (defer.c keeps it owed), in
 * the same write, and the session counts as idle when the prefetch's
 * reply said it was idle but for this operation. So a signature in the
 * length-query-first convention is one round trip, as in one call, once
 * its Init is deferred. When defer.c has no room left to keep the cancel
 * owed, the result is not handed over but forgotten, and the follow-up
 * goes to the daemon: the cancel is never sent from here, under h.mu,
 * which every call takes.
 *
 * An Update (C_EncryptUpdate, C_DecryptUpdate, from protocol version 4,
 * hsm_call.goes_on) is held the same way, but its operation goes on: the
 * daemon ran the update at the query and keeps its output, with the state
 * before it to go back to for a follow-up with other input. What the
 * module owes once the follow-up took the output is the word that it was
 * collected (C_SessionCancel with HSM_COLLECT_UPDATE, which ends nothing),
 * so that the daemon's next Update goes on from there; a follow-up with
 * other input goes to the daemon without it, and the daemon goes back.
 *
 * A message (C_EncryptMessage, C_DecryptMessage, C_SignMessage, and the
 * parts of C_EncryptMessageNext, C_DecryptMessageNext and
 * C_SignMessageNext, from protocol version 5) is held with what its
 * parameter gets back (an encryption's IV of the token's and its tag:
 * hsm_held_side), which goes to the caller with the output and only with
 * it; the parameter is among the arguments the follow-up is matched by,
 * and so are a Next's flags after the output (tail). What the module owes
 * once it is handed over is the end of that message (C_SessionCancel
 * with the process's flag and calls.CancelCurrentMessage; the process
 * goes on), or for a part before the last the word that it was collected
 * (goes_on, as for an Update). A follow-up with other input goes to the
 * daemon, which makes a one-call message anew, under a new IV of the
 * token's, and refuses a part's (the part is in the message already).
 *
 * C_WrapKeyAuthenticated (from protocol version 6) is C_WrapKey's case
 * with a message's parameter: the daemon seals at the query, under an IV
 * of the token's, and the module holds the ciphertext with the IV and
 * the tag (hsm_held_side) for the follow-up that brings the same
 * mechanism, parameter, keys and associated data. It has no operation,
 * so nothing is owed once it is handed over (cancel_call 0); a follow-up
 * with other arguments goes to the daemon, which seals anew under a new
 * IV.
 *
 * Results are wiped (explicit_bzero) when handed over or forgotten, and
 * so is their copy in the reply that brought them.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "hsm.h"

#define HELD_MAX 128 /* sessions tracked */
/* What a held result is matched by: the call number and the session,
 * then the length of the other arguments before the output and, past
 * HELD_COPY_MAX bytes of them, their SHA-256; up to it, a copy of them. */
#define HELD_KEY_LEN (4 + 8 + 8 + 32)
/* Arguments up to this size are kept and compared as they are: cheaper
 * than two SHA-256s (measured: an EVP_Digest of 1 KiB costs 0.7 us, and
 * one through EVP_sha256()'s implicit fetch 0.4 us more, on every
 * length query and its follow-up). */
#define HELD_COPY_MAX 4096

typedef struct {
	uint64_t session;
	int used;
	unsigned long seq; /* the number of the last call begun on the session (h.seq) */
	int calls;         /* calls on the session in flight */

	/* The held result, when has. */
	int has;
	uint8_t key[HELD_KEY_LEN]; /* the call and the arguments it is matched by */
	uint8_t *args;             /* those arguments themselves, up to HELD_COPY_MAX */
	size_t args_len;
	uint8_t *data;
	size_t len;
	/* A message's: what its parameter gets back with the output, the
	 * strings one after another. */
	uint8_t *side;
	size_t side_len;
	uint32_t side_n[HSM_HELD_SIDES];
	int side_set[HSM_HELD_SIDES];
	unsigned long app_gen;   /* the daemon's application it came from */
	uint32_t cancel_call;    /* C_SessionCancel, or 0 when the call ends no operation (the wraps) */
	uint64_t cancel_flags;
	unsigned long defer_seq; /* the prefetch's number on its session in defer.c */
	int idle_but;            /* its reply said: idle but for this operation */
} entry;

static struct {
	hsm_mutex *mu;
	entry e[HELD_MAX];
	/* Calls begun on any session: a call's number is unique, so an
	 * entry given to another session and back never matches a number
	 * of its former life. */
	unsigned long seq;
	/* Mutating calls in flight, and the count of their starts and ends:
	 * a prefetch that overlapped one is not kept. */
	int mutating;
	unsigned long mgen;
} h;

static void wipe(entry *e)
{
	hsm_free_wipe(e->data, e->len);
	hsm_free_wipe(e->args, e->args_len);
	hsm_free_wipe(e->side, e->side_len);
	e->data = NULL;
	e->len = 0;
	e->args = NULL;
	e->args_len = 0;
	e->side = NULL;
	e->side_len = 0;
	memset(e->side_n, 0, sizeof e->side_n);
	memset(e->side_set, 0, sizeof e->side_set);
	e->has = 0;
	explicit_bzero(e->key, sizeof e->key);
}

static void wipe_all(void)
{
	for (int i = 0; i < HELD_MAX; i++) {
		wipe(&h.e[i]);
		memset(&h.e[i], 0, sizeof h.e[i]);
	}
}

CK_RV hsm_held_init(void)
{
	hsm_mutex *mu;
	CK_RV rv = hsm_mutex_new(&mu);
	if (rv != CKR_OK)
		return rv;
	wipe_all();
	h.mutating = 0;
	h.mu = mu;
	return CKR_OK;
}

void hsm_held_finalize(void)
{
	if (h.mu == NULL)
		return;
	hsm_lock(h.mu);
	wipe_all();
	hsm_unlock(h.mu);
	hsm_mutex_free(h.mu);
	h.mu = NULL;
}

void hsm_held_forget_inherited(void)
{
	/* As pool.c: a parent's thread may hold the mutex. The results are
	 * the parent's, and its sessions are not the child's. */
	wipe_all();
	h.mutating = 0;
	if (h.mu != NULL)
		hsm_mutex_abandon(h.mu);
	h.mu = NULL;
}

void hsm_held_atfork_prepare(void)
{
	if (h.mu != NULL)
		hsm_lock(h.mu);
}

void hsm_held_atfork_parent(void)
{
	if (h.mu != NULL)
		hsm_unlock(h.mu);
}

void hsm_held_atfork_child(void)
{
	/* One thread, and the mutex held (hsm_held_atfork_prepare took it,
	 * so the table is whole): only wipe the bytes, the child's
	 * C_Initialize frees them (hsm_held_forget_inherited). */
	for (int i = 0; i < HELD_MAX; i++) {
		entry *e = &h.e[i];
		if (e->data != NULL)
			explicit_bzero(e->data, e->len);
		if (e->args != NULL)
			explicit_bzero(e->args, e->args_len);
		if (e->side != NULL)
			explicit_bzero(e->side, e->side_len);
		e->has = 0;
	}
}

static entry *find(uint64_t session)
{
	for (int i = 0; i < HELD_MAX; i++)
		if (h.e[i].used && h.e[i].session == session)
			return &h.e[i];
	return NULL;
}

static entry *add(uint64_t session)
{
	for (int i = 0; i < HELD_MAX; i++) {
		entry *e = &h.e[i];
		if (!e->used || (e->calls == 0 && !e->has)) {
			memset(e, 0, sizeof *e);
			e->used = 1;
			e->session = session;
			return e;
		}
	}
	return NULL;
}

/* sha256 is SHA-256 fetched once: EVP_sha256() fetches it again at
 * every digest. */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void sha256_fetch(void) { sha256_md = EVP_MD_fetch(NULL, "SHA2-256", NULL); }

/* args returns the arguments a follow-up is matched by: every argument
 * before the output, after the call number and the session. NULL when the
 * request does not have them. */
static const uint8_t *args(const hsm_call *c, size_t *n)
{
	if (c->req.p == NULL || c->req.out_at < 8 + 4 + 8 || c->req.out_at > c->req.len)
		return NULL;
	*n = c->req.out_at - (8 + 4 + 8);
	return c->req.p + 8 + 4 + 8;
}

/* tail returns the arguments after the output's outspec (u8, u64): a
 * message Next's flags, which say whether the part is the last. */
static const uint8_t *tail(const hsm_call *c, size_t *n)
{
	size_t at = c->req.out_at + 1 + 8;
	*n = at <= c->req.len ? c->req.len - at : 0;
	return c->req.p + (at <= c->req.len ? at : c->req.len);
}

/* HELD_TAIL_MAX: the arguments after the output a key takes as they are. */
#define HELD_TAIL_MAX 32

/* key makes what a follow-up is matched by: the call number and the
 * session as they are, then the other arguments' length and, when they
 * are longer than HELD_COPY_MAX (shorter ones are compared as they are),
 * their SHA-256: the input of a call that continues an operation (the
 * daemon gives its kept output only to the same input), the mechanism and
 * both keys of C_WrapKey, a message's parameter. The arguments after the
 * output (a message Next's flags) are in the SHA-256 too, or else in the
 * key as they are. 0 when it cannot be made. */
static int key(const hsm_call *c, uint8_t k[HELD_KEY_LEN])
{
	size_t rest, tn;
	const uint8_t *a = args(c, &rest);
	if (a == NULL)
		return 0;
	const uint8_t *t = tail(c, &tn);
	if (tn > HELD_TAIL_MAX)
		return 0;
	memset(k, 0, HELD_KEY_LEN);
	memcpy(k, c->req.p + 8, 4 + 8);
	for (int i = 0; i < 8; i++)
		k[12 + i] = (uint8_t)((uint64_t)rest >> (56 - 8 * i));
	if (rest <= HELD_COPY_MAX) {
		if (tn > 0)
			memcpy(k + 20, t, tn);
		return 1;
	}
	unsigned int n = 0;
	pthread_once(&sha256_once, sha256_fetch);
	if (sha256_md == NULL)
		return 0;
	if (tn == 0)
		return EVP_Digest(a, rest, k + 20, &n, sha256_md, NULL) == 1 && n == 32;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int ok = ctx != NULL && EVP_DigestInit_ex(ctx, sha256_md, NULL) == 1 && EVP_DigestUpdate(ctx, a, rest) == 1 &&
		 EVP_DigestUpdate(ctx, t, tn) == 1 && EVP_DigestFinal_ex(ctx, k + 20, &n) == 1 && n == 32;
	EVP_MD_CTX_free(ctx);
	return ok;
}

/* same compares two keys; they name the caller's own data, so no secret
 * is timed, but a constant-time compare costs nothing here. */
static int same(const uint8_t a[HELD_KEY_LEN], const uint8_t b[HELD_KEY_LEN])
{
	uint8_t d = 0;
	for (int i = 0; i < HELD_KEY_LEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

void hsm_held_begin(hsm_call *c)
{
	c->held_seq = 0;
	c->held_mut = 0;
	if (h.mu == NULL || (!c->on_session && !c->mutates))
		return;
	hsm_lock(h.mu);
	if (c->mutates) {
		/* Dropped now, and no prefetch is kept until it ends (as
		 * defer.c holds no Init back): one that runs beside it may
		 * have been answered before its change. */
		for (int i = 0; i < HELD_MAX; i++)
			wipe(&h.e[i]);
		h.mutating++;
		h.mgen++;
		c->held_mut = 1;
		c->held_epoch = hsm_epoch();
	}
	c->held_mgen = h.mgen;
	if (c->on_session) {
		entry *e = find(c->session);
		if (e == NULL)
			e = add(c->session);
		if (e != NULL) {
			wipe(e);
			e->calls++;
			c->held_seq = e->seq = ++h.seq;
		}
	}
	hsm_unlock(h.mu);
}

void hsm_held_end(hsm_call *c)
{
	if (h.mu == NULL || (c->held_seq == 0 && !c->held_mut))
		return;
	hsm_lock(h.mu);
	if (c->held_seq != 0) {
		entry *e = find(c->session);
		if (e != NULL && e->calls > 0)
			e->calls--;
	}
	/* A call that outlived C_Finalize was counted in a table that is
	 * gone. */
	if (c->held_mut && c->held_epoch == hsm_epoch()) {
		for (int i = 0; i < HELD_MAX; i++)
			wipe(&h.e[i]);
		if (h.mutating > 0)
			h.mutating--;
		h.mgen++;
	}
	c->held_mut = 0;
	hsm_unlock(h.mu);
}

/* side_copy copies what a message's parameter gets back, the strings
 * one after another; 0 when there is no room. */
static int side_copy(entry *e, const hsm_held_side *side)
{
	size_t total = 0;
	for (int i = 0; i < HSM_HELD_SIDES; i++)
		if (side->set[i])
			total += side->n[i];
	uint8_t *p = malloc(total > 0 ? total : 1);
	if (p == NULL)
		return 0;
	size_t at = 0;
	for (int i = 0; i < HSM_HELD_SIDES; i++) {
		e->side_set[i] = side->set[i];
		e->side_n[i] = side->set[i] ? side->n[i] : 0;
		if (e->side_n[i] > 0)
			memcpy(p + at, side->p[i], e->side_n[i]);
		at += e->side_n[i];
	}
	e->side = p;
	e->side_len = total;
	return 1;
}

void hsm_held_keep(hsm_call *c, hsm_outbytes *o, const void *out, hsm_held_side *side, int ok)
{
	/* Only a whole result; anything else is for the stub to refuse. */
	if (c->req.prefetch_at == 0 || out != NULL || o->data == NULL || c->rv != CKR_OK || o->n != o->len)
		return;
	uint8_t k[HELD_KEY_LEN];
	if (h.mu != NULL && c->held_seq != 0 && ok && key(c, k)) {
		hsm_lock(h.mu);
		entry *e = find(c->session);
		/* Alone on its session from start to here, for the same
		 * application of the daemon, and no mutating call ran
		 * meanwhile. */
		if (e != NULL && e->seq == c->held_seq && e->calls == 0 && c->held_gen == hsm_exchange_app_gen() &&
		    h.mutating == 0 && h.mgen == c->held_mgen) {
			size_t an = 0;
			const uint8_t *a = args(c, &an);
			uint8_t *copy = malloc(o->n > 0 ? o->n : 1);
			uint8_t *acopy = an <= HELD_COPY_MAX ? malloc(an > 0 ? an : 1) : NULL;
			if (copy != NULL && (an > HELD_COPY_MAX || acopy != NULL)) {
				wipe(e);
				memcpy(copy, o->data, o->n);
				e->data = copy;
				e->len = o->n;
				if (acopy != NULL) {
					memcpy(acopy, a, an);
					e->args = acopy;
					e->args_len = an;
				}
				memcpy(e->key, k, sizeof e->key);
				if (side != NULL && !side_copy(e, side)) {
					wipe(e);
					hsm_unlock(h.mu);
					goto done;
				}
				e->app_gen = c->held_gen;
				e->cancel_call = c->continues ? c->cancel_call : 0;
				e->cancel_flags = c->cancel_flags;
				e->defer_seq = c->defer_seq;
				e->idle_but = c->idle_but;
				if (c->goes_on) {
					/* An Update, a message part before the
					 * last: the daemon delivers its kept output
					 * and the operation goes on. */
					e->cancel_flags = HSM_COLLECT_UPDATE | (c->cancel_flags << 32 & HSM_COLLECT_KINDS);
					e->idle_but = 0;
				}
				e->has = 1;
			} else {
				free(copy);
				free(acopy);
			}
		}
		hsm_unlock(h.mu);
	}
done:
	explicit_bzero(k, sizeof k);
	/* The reply's copy goes now; the caller gets only the length, and
	 * its parameter nothing (a size query writes nothing back). */
	explicit_bzero((void *)o->data, o->n);
	o->data = NULL;
	o->n = 0;
	if (side != NULL)
		for (int i = 0; i < HSM_HELD_SIDES; i++) {
			if (side->set[i] && side->n[i] > 0)
				explicit_bzero((void *)side->p[i], side->n[i]);
			side->set[i] = 0;
			side->p[i] = NULL;
			side->n[i] = 0;
		}
}

void hsm_held_side_release(hsm_held_side *side)
{
	hsm_free_wipe(side->own, side->own_len);
	memset(side, 0, sizeof *side);
}

int hsm_held_serve(hsm_call *c, CK_BYTE_PTR out, CK_ULONG_PTR out_len, CK_RV *rv, hsm_held_side *side)
{
	if (h.mu == NULL || c->req.err != CKR_OK || !c->on_session)
		return 0;
	/* Most calls find nothing held: they pay no hash. */
	hsm_lock(h.mu);
	entry *e = find(c->session);
	int held = e != NULL && e->has;
	hsm_unlock(h.mu);
	if (!held)
		return 0;
	uint8_t k[HELD_KEY_LEN];
	if (!key(c, k))
		return 0;
	int served = 0;
	hsm_lock(h.mu);
	e = find(c->session);
	if (e != NULL && e->has && e->app_gen != hsm_exchange_app_gen())
		wipe(e); /* the daemon lost the application since */
	size_t an = 0;
	const uint8_t *a = args(c, &an);
	if (e != NULL && e->has && e->calls == 0 &&
	    (!same(e->key, k) || (e->args != NULL && (e->args_len != an || memcmp(e->args, a, an) != 0)))) {
		/* Other arguments: not the held result's call. It goes to the
		 * daemon, which answers for its own input. */
		wipe(e);
	} else if (e != NULL && e->has && e->calls == 0 && out != NULL && *out_len >= e->len && e->cancel_call != 0 &&
		   !hsm_defer_collected(c->session, e->cancel_call, e->cancel_flags, e->defer_seq, e->idle_but,
				      e->app_gen)) {
		/* The hand-over would owe the daemon a C_SessionCancel that
		 * defer.c has no room to carry (every entry holds a session's
		 * state), or the daemon lost the application meanwhile.
		 * Sending the cancel now would be a round trip under h.mu,
		 * which every call takes: one slow daemon would stall every
		 * thread. The result is forgotten instead, and the follow-up
		 * goes to the daemon, which gives the same input its kept
		 * output and ends the operation itself, owing nothing. */
		wipe(e);
	} else if (e != NULL && e->has && e->calls == 0) {
		served = 1;
		CK_ULONG n = (CK_ULONG)e->len;
		if (out == NULL) {
			*rv = CKR_OK;
		} else if (*out_len < n) {
			*rv = CKR_BUFFER_TOO_SMALL;
		} else {
			if (n > 0)
				memcpy(out, e->data, n);
			*rv = CKR_OK;
			if (side != NULL) {
				/* What the parameter gets back goes to the
				 * caller with the output, and only with it. */
				size_t at = 0;
				memset(side, 0, sizeof *side);
				for (int i = 0; e->side != NULL && i < HSM_HELD_SIDES; i++) {
					side->set[i] = e->side_set[i];
					side->n[i] = e->side_n[i];
					side->p[i] = e->side + at;
					at += e->side_n[i];
				}
				side->own = e->side;
				side->own_len = e->side_len;
				e->side = NULL;
				e->side_len = 0;
			}
			/* What it owes the daemon, if anything, defer.c took
			 * above, under the lock, so no call on the session left
			 * in between: the daemon ends the operation before
			 * anything else of the session reaches it. */
			wipe(e);
		}
		*out_len = n;
	}
	hsm_unlock(h.mu);
	explicit_bzero(k, sizeof k);
	return served;
}
