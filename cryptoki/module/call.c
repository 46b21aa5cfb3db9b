/*
 * call.c: one call to the daemon. A stub encodes its arguments after the
 * frame header hsm_call_init reserves; hsm_call_run sends the request and
 * reads its reply through exchange.c, which also checks the reply's
 * framing, and turns a failed exchange into the call's rv (a broken
 * connection CKR_DEVICE_REMOVED, a malformed reply or a timeout
 * CKR_DEVICE_ERROR); the stub then decodes the results.
 *
 * An Init may instead be held back to travel with its session's next call
 * (defer.c); then that call sends two requests in one write and reads two
 * replies. A C_SessionCancel the module owes the daemon (held.c handed
 * over a result of an operation the daemon still keeps) goes first, the
 * same way.
 *
 * A call that continues an operation and fails here, before the daemon
 * saw it (a NULL length pointer, data too long for a frame), ends its
 * operation as the specification says every error but CKR_BUFFER_TOO_SMALL
 * does: the module sends C_SessionCancel for it (hsm_call_abandon).
 */
#include <stdlib.h>
#include <string.h>

#include "hsm.h"

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

enum hsm_outcome hsm_call_run(hsm_call *c)
{
	if (c->req.err != CKR_OK) {
		c->rv = c->req.err;
		if (c->cancel_call != 0)
			hsm_call_abandon((CK_SESSION_HANDLE)c->session, c->cancel_call, c->continues, c->cancel_flags,
					 c->rv);
		return HSM_FAILED;
	}
	if (c->starts && hsm_defer_hold(c)) {
		c->rv = CKR_OK;
		c->has_results = 0;
		return HSM_REPLIED;
	}

	hsm_held_begin(c);
	hsm_carry k;
	CK_RV failed = hsm_defer_begin(c, &k);
	if (failed != CKR_OK) {
		hsm_defer_end(c, &k, 0, CKR_OK);
		hsm_held_end(c);
		c->rv = failed;
		return HSM_FAILED;
	}
	c->defer_seq = k.seq;

	/* An owed C_SessionCancel first, then the carried Init, then the
	 * call: one write. */
	hsm_wbuf cancel = {.err = CKR_OK};
	if (k.cancel != 0) {
		hsm_put_u32(&cancel, 0);
		hsm_put_u32(&cancel, 0);
		hsm_put_u32(&cancel, k.cancel_call);
		hsm_put_u64(&cancel, c->session);
		hsm_put_u64(&cancel, k.cancel);
	}
	hsm_wbuf init = {.p = k.init, .len = k.init_len, .cap = k.init_cap, .err = CKR_OK};
	hsm_wbuf *reqs[HSM_EXCHANGE_MAX];
	int n = 0, init_at = -1;
	if (k.cancel != 0 && cancel.err == CKR_OK)
		reqs[n++] = &cancel;
	if (k.init != NULL) {
		init_at = n;
		reqs[n++] = &init;
	}
	reqs[n++] = &c->req;
	CK_RV rv[HSM_EXCHANGE_MAX] = {CKR_OK, CKR_OK, CKR_OK};
	int idle[HSM_EXCHANGE_MAX] = {0, 0, 0};
	uint8_t *replies[HSM_EXCHANGE_MAX] = {NULL, NULL, NULL};
	uint32_t lens[HSM_EXCHANGE_MAX] = {0, 0, 0};
	enum hsm_io io = hsm_exchange(reqs, n, rv, idle, replies, lens, c->timeout_ms, n > 1 ? k.app_gen : 0);
	if (io == HSM_IO_STALE) {
		/* The held Init's and the cancel's session went with the
		 * daemon's application: they are dropped, the call goes alone. */
		n = 1;
		init_at = -1;
		reqs[0] = &c->req;
		io = hsm_exchange(reqs, 1, rv, idle, replies, lens, c->timeout_ms, 0);
	}
	hsm_wbuf_free(&cancel);
	/* The daemon's application the reply came from: held.c keeps a
	 * result only for it (the call's own dial may have begun it). */
	c->held_gen = hsm_exchange_app_gen();
	int replied = io == HSM_IO_OK;
	CK_RV init_rv = init_at >= 0 && replied ? rv[init_at] : CKR_OK;
	for (int i = 0; i < n - 1; i++)
		hsm_free_wipe(replies[i], lens[i]);
	if (replied) {
		c->rv = rv[n - 1];
		c->idle = idle[n - 1];
		c->reply = replies[n - 1];
		c->reply_len = lens[n - 1];
		c->has_results = c->reply != NULL;
		if (c->has_results) {
			c->res.p = c->reply + 13;
			c->res.len = lens[n - 1] - 13;
			c->res.off = 0;
			c->res.bad = 0;
		}
		/* A prefetch's idle flag leaves out the operation whose
		 * result came: held.c keeps it, and defer.c hears of it only
		 * when the result is handed over. A wrap continues no
		 * operation and the daemon keeps nothing of it, so its flag
		 * is the session's as it is. */
		if (c->req.prefetch_at != 0 && c->continues) {
			c->idle_but = c->idle;
			c->idle = 0;
		}
	}
	hsm_defer_end(c, &k, replied, init_rv);
	hsm_held_end(c);

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
	/* The request may hold a PIN, a key's value, plaintext; the reply
	 * a key's value, plaintext: wiped, as everything that carried them. */
	hsm_wbuf_free(&c->req);
	hsm_free_wipe(c->reply, c->reply_len);
	hsm_wbuf_free(&c->shape);
	c->reply = NULL;
	c->reply_len = 0;
}

CK_RV hsm_call_cancel(CK_SESSION_HANDLE session, uint32_t call, unsigned kinds, uint64_t flags)
{
	/* A deferred Init the daemon refused left no operation to end. */
	hsm_defer_forget_failed((uint64_t)session, kinds);
	hsm_call c;
	hsm_call_init(&c, call);
	hsm_put_u64(&c.req, (uint64_t)session);
	hsm_put_u64(&c.req, flags);
	c.on_session = 1;
	c.session = (uint64_t)session;
	CK_RV rv = hsm_call_run(&c) == HSM_OFFLINE ? CKR_SESSION_HANDLE_INVALID : c.rv;
	hsm_call_end(&c);
	return rv;
}

CK_RV hsm_call_abandon(CK_SESSION_HANDLE session, uint32_t call, unsigned kinds, uint64_t flags, CK_RV rv)
{
	(void)hsm_call_cancel(session, call, kinds, flags);
	return rv;
}
