/*
 * call.c: one call to the daemon. A stub encodes its arguments after the
 * frame header hsm_call_init reserves; hsm_call_run takes a connection from
 * the pool, sends the request, reads the reply and checks its framing; the
 * stub then decodes the results. Nothing of a reply is trusted: its length
 * is capped (16 MiB), its request id must be ours, and any framing error
 * discards the connection and fails the call with CKR_DEVICE_ERROR.
 *
 * An Init may instead be held back to travel with its session's next call
 * (defer.c); then that call sends two requests in one write and reads two
 * replies.
 */
#include <stdlib.h>
#include <string.h>

#include "hsm.h"

/* Reply flags (docs/protocol.md, "Frames"). */
#define REPLY_RESULTS 1
#define REPLY_IDLE 2

void hsm_call_init(hsm_call *c, uint32_t call)
{
	memset(c, 0, sizeof *c);
	c->req.err = CKR_OK;
	c->shape.err = CKR_OK;
	c->timeout_ms = hsm_config_get()->timeout_ms;
	hsm_put_u32(&c->req, 0); /* length, set when sent */
	hsm_put_u32(&c->req, 0); /* request id, idem */
	hsm_put_u32(&c->req, call);
}

void hsm_call_shape(hsm_call *c, const CK_MECHANISM *m)
{
	c->shape.strip = 1;
	hsm_put_u64(&c->shape, c->session);
	hsm_put_mechanism(&c->shape, m);
}

static CK_RV io_rv(enum hsm_io io)
{
	switch (io) {
	case HSM_IO_BROKEN:
		return CKR_DEVICE_REMOVED;
	case HSM_IO_FINALIZED:
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	case HSM_IO_NOMEM:
		return CKR_HOST_MEMORY;
	default:
		return CKR_DEVICE_ERROR;
	}
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
	free(all);
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
	if (app_gen != 0 && hsm_defer_app_gen() != app_gen) {
		hsm_pool_put(conn, 1);
		return HSM_IO_STALE;
	}

	uint32_t ids[2];
	uint8_t *frames[2] = {NULL, NULL};
	if (n < 1 || n > 2) {
		hsm_pool_put(conn, 1);
		return HSM_IO_NOMEM;
	}
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
		free(frames[i]);
	hsm_pool_put(conn, io == HSM_IO_OK);
	if (io != HSM_IO_OK)
		for (int i = 0; i < n; i++) {
			free(replies[i]);
			replies[i] = NULL;
		}
	return io;
}

enum hsm_outcome hsm_call_run(hsm_call *c)
{
	if (c->req.err != CKR_OK) {
		c->rv = c->req.err;
		return HSM_FAILED;
	}
	if (c->starts && hsm_defer_hold(c)) {
		c->rv = CKR_OK;
		c->has_results = 0;
		return HSM_REPLIED;
	}

	hsm_carry k;
	CK_RV failed = hsm_defer_begin(c, &k);
	if (failed != CKR_OK) {
		hsm_defer_end(c, &k, 0, CKR_OK);
		c->rv = failed;
		return HSM_FAILED;
	}

	/* The carried Init first, then the call. */
	hsm_wbuf init = {.p = k.init, .len = k.init_len, .cap = k.init_len, .err = CKR_OK};
	hsm_wbuf *reqs[2] = {&init, &c->req};
	int n = k.init != NULL ? 2 : 1;
	CK_RV rv[2] = {CKR_OK, CKR_OK};
	int idle[2] = {0, 0};
	uint8_t *replies[2] = {NULL, NULL};
	uint32_t lens[2] = {0, 0};
	hsm_wbuf **mine = n == 2 ? reqs : reqs + 1;
	enum hsm_io io = hsm_exchange(mine, n, rv, idle, replies, lens, c->timeout_ms, n == 2 ? k.app_gen : 0);
	if (io == HSM_IO_STALE) {
		/* The held Init's session went with the daemon's application:
		 * the Init is dropped, the call goes alone. */
		n = 1;
		mine = reqs + 1;
		io = hsm_exchange(mine, 1, rv, idle, replies, lens, c->timeout_ms, 0);
	}
	int replied = io == HSM_IO_OK;
	CK_RV init_rv = n == 2 && replied ? rv[0] : CKR_OK;
	if (n == 2)
		free(replies[0]);
	if (replied) {
		c->rv = rv[n - 1];
		c->idle = idle[n - 1];
		c->reply = replies[n - 1];
		c->has_results = c->reply != NULL;
		if (c->has_results) {
			c->res.p = c->reply + 13;
			c->res.len = lens[n - 1] - 13;
			c->res.off = 0;
			c->res.bad = 0;
		}
	}
	hsm_defer_end(c, &k, replied, init_rv);

	if (io == HSM_IO_UNAVAILABLE)
		return HSM_OFFLINE;
	if (!replied) {
		c->rv = io_rv(io);
		return HSM_FAILED;
	}
	/* A deferred Init that failed is what a call continuing its
	 * operation reports (the daemon answered the call itself with
	 * CKR_OPERATION_NOT_INITIALIZED). */
	if (init_rv != CKR_OK && (c->continues & k.kind)) {
		c->rv = init_rv;
		return HSM_FAILED;
	}
	return HSM_REPLIED;
}

void hsm_call_end(hsm_call *c)
{
	free(c->req.p);
	free(c->reply);
	free(c->shape.p);
	c->req.p = NULL;
	c->reply = NULL;
	c->shape.p = NULL;
}
