/*
 * exchange.c: up to three request frames on one pooled connection, and
 * their replies. The frames are numbered and sent in one write; nothing of
 * a reply is trusted: its length is capped (16 MiB, conn.c), its request id
 * must be ours, its flags those of the connection's version, and any
 * framing error discards the connection (HSM_IO_MALFORMED).
 *
 * It knows nothing of calls or deferred Inits. It keeps one counter for
 * defer.c, the daemon's application generation, so that a request held for
 * an application the daemon no longer has is not sent (HSM_IO_STALE): the
 * check must fall after the pool hands out the connection, whose dial may
 * be the one that found the application fresh.
 */
#include <stdlib.h>
#include <string.h>

#include "hsm.h"

/* Reply flags (docs/protocol.md, "Frames"). */
#define REPLY_RESULTS 1
#define REPLY_IDLE 2

/* Moved on by defer.c under its mutex; read here without it. Never 0 once
 * C_Initialize has run, since 0 means "any". */
static unsigned long app_gen;

unsigned long hsm_exchange_app_gen(void)
{
	return __atomic_load_n(&app_gen, __ATOMIC_ACQUIRE);
}

void hsm_exchange_app_next(void)
{
	__atomic_add_fetch(&app_gen, 1, __ATOMIC_RELEASE);
}

/* send_frames numbers the frames and sends them in one write. */
static enum hsm_io send_frames(hsm_conn *conn, hsm_wbuf **reqs, int n, uint32_t *ids)
{
	size_t total = 0;
	for (int i = 0; i < n; i++) {
		ids[i] = conn->next_id++;
		if (conn->next_id == 0)
			conn->next_id = 1;
		hsm_put_be32(reqs[i]->p, (uint32_t)(reqs[i]->len - 4));
		hsm_put_be32(reqs[i]->p + 4, ids[i]);
		total += reqs[i]->len;
	}
	if (n == 1)
		return hsm_conn_send(conn->fd, reqs[0]->p, reqs[0]->len, conn->epoch);
	uint8_t *all = malloc(total);
	if (all == NULL)
		return HSM_IO_NOMEM;
	size_t off = 0;
	for (int i = 0; i < n; i++) {
		memcpy(all + off, reqs[i]->p, reqs[i]->len);
		off += reqs[i]->len;
	}
	enum hsm_io io = hsm_conn_send(conn->fd, all, total, conn->epoch);
	hsm_free_wipe(all, total);
	return io;
}

enum hsm_io hsm_exchange(hsm_wbuf **reqs, int n, CK_RV *rv, int *idle, uint8_t **replies,
			 uint32_t *lens, int timeout_ms, unsigned long app_gen)
{
	hsm_conn *conn;
	enum hsm_io io = hsm_pool_get(&conn);
	if (io != HSM_IO_OK)
		return io;
	/* The connection's dial may have found the application gone. */
	if (app_gen != 0 && hsm_exchange_app_gen() != app_gen) {
		hsm_pool_put(conn, 1);
		return HSM_IO_STALE;
	}

	uint32_t ids[HSM_EXCHANGE_MAX];
	uint8_t *frames[HSM_EXCHANGE_MAX] = {NULL};
	if (n < 1 || n > HSM_EXCHANGE_MAX) {
		hsm_pool_put(conn, 1);
		return HSM_IO_NOMEM;
	}
	/* A daemon before version 3 knows no prefetch, one before version 4
	 * no prefetch of an Update, one before version 5 none of a message,
	 * one before version 6 none of C_WrapKeyAuthenticated: a plain NULL
	 * buffer. */
	for (int i = 0; i < n; i++)
		if (reqs[i]->prefetch_at != 0 &&
		    conn->version < (reqs[i]->prefetch_version != 0 ? reqs[i]->prefetch_version : 3)) {
			reqs[i]->p[reqs[i]->prefetch_at] = 0;
			reqs[i]->prefetch_at = 0;
		}
	hsm_stats_trip(hsm_ring_is(conn->fd));
	io = send_frames(conn, reqs, n, ids);
	if (io == HSM_IO_OK)
		io = hsm_conn_recv_frames(conn->fd, n, frames, lens, timeout_ms, conn->epoch);
	for (int i = 0; io == HSM_IO_OK && i < n; i++) {
		const uint8_t *f = frames[i];
		uint8_t flags = f[12];
		uint64_t v = hsm_be64(f + 4);
		uint8_t allowed = conn->version >= 2 ? (REPLY_RESULTS | REPLY_IDLE) : REPLY_RESULTS;
		if (hsm_be32(f) != ids[i] || (flags & ~allowed) != 0 ||
		    (!(flags & REPLY_RESULTS) && lens[i] != 13) || !hsm_fits_ulong(v)) {
			io = HSM_IO_MALFORMED;
			break;
		}
		rv[i] = (CK_RV)v;
		idle[i] = (flags & REPLY_IDLE) != 0;
		replies[i] = NULL;
		if (flags & REPLY_RESULTS) {
			replies[i] = frames[i];
			frames[i] = NULL;
		}
	}
	for (int i = 0; i < n; i++)
		hsm_free_wipe(frames[i], lens[i]);
	hsm_pool_put(conn, io == HSM_IO_OK);
	if (io != HSM_IO_OK)
		for (int i = 0; i < n; i++) {
			hsm_free_wipe(replies[i], lens[i]);
			replies[i] = NULL;
		}
	return io;
}
