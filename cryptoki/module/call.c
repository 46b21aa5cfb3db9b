/*
 * call.c: one call to the daemon. A stub encodes its arguments after the
 * frame header hsm_call_init reserves; hsm_call_run takes a connection from
 * the pool, sends the request, reads the reply and checks its framing; the
 * stub then decodes the results. Nothing of a reply is trusted: its length
 * is capped (16 MiB), its request id must be ours, and any framing error
 * discards the connection and fails the call with CKR_DEVICE_ERROR.
 */
#include <stdlib.h>
#include <string.h>

#include "hsm.h"

void hsm_call_init(hsm_call *c, uint32_t call)
{
	memset(c, 0, sizeof *c);
	c->req.err = CKR_OK;
	c->timeout_ms = hsm_config_get()->timeout_ms;
	hsm_put_u32(&c->req, 0); /* length, set when sent */
	hsm_put_u32(&c->req, 0); /* request id, idem */
	hsm_put_u32(&c->req, call);
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
		return HSM_FAILED;
	}

	hsm_conn *conn;
	enum hsm_io io = hsm_pool_get(&conn);
	if (io == HSM_IO_UNAVAILABLE)
		return HSM_OFFLINE;
	if (io != HSM_IO_OK) {
		c->rv = io_rv(io);
		return HSM_FAILED;
	}

	uint32_t id = conn->next_id++;
	if (conn->next_id == 0)
		conn->next_id = 1;
	hsm_put_be32(c->req.p, (uint32_t)(c->req.len - 4));
	hsm_put_be32(c->req.p + 4, id);

	uint32_t n = 0;
	io = hsm_conn_send(conn->fd, c->req.p, c->req.len, conn->epoch);
	if (io == HSM_IO_OK)
		io = hsm_conn_recv_frame(conn->fd, &c->reply, &n, c->timeout_ms, conn->epoch);
	if (io == HSM_IO_OK) {
		uint8_t has = c->reply[12];
		uint64_t rv = hsm_be64(c->reply + 4);
		if (hsm_be32(c->reply) != id || has > 1 || (!has && n != 13) || !hsm_fits_ulong(rv))
			io = HSM_IO_MALFORMED;
		else {
			c->rv = (CK_RV)rv;
			c->has_results = has;
			c->res.p = c->reply + 13;
			c->res.len = n - 13;
			c->res.off = 0;
			c->res.bad = 0;
		}
	}
	hsm_pool_put(conn, io == HSM_IO_OK);
	if (io != HSM_IO_OK) {
		c->rv = io_rv(io);
		return HSM_FAILED;
	}
	return HSM_REPLIED;
}

void hsm_call_end(hsm_call *c)
{
	free(c->req.p);
	free(c->reply);
	c->req.p = NULL;
	c->reply = NULL;
}
