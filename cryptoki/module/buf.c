/*
 * buf.c: the protocol's values (docs/protocol.md, "Values"), encoded into a
 * growing request buffer and decoded from a reply with a bound on every
 * length. Encoding errors are sticky in hsm_wbuf.err and decoding errors in
 * hsm_rbuf.bad, so a stub encodes or decodes everything and checks once.
 *
 * Request and reply bytes carry PINs, key values and plaintext, and the
 * module runs in the application's process: a buffer that held them is
 * wiped before it is freed (hsm_free_wipe), so neither a core dump of the
 * application nor a later malloc finds them in freed memory. A request
 * buffer grows by a new allocation, never realloc, which would free the
 * old copy unwiped.
 */
#define _DEFAULT_SOURCE /* explicit_bzero */
#include <stdlib.h>
#include <string.h>

#include "hsm.h"

void hsm_free_wipe(void *p, size_t n)
{
	if (p == NULL)
		return;
	explicit_bzero(p, n);
	free(p);
}

/* Only the first len bytes were ever written: a buffer grows by a fresh
 * allocation that takes just those (grow), and len never shrinks but here.
 * So they are what is wiped, not the whole capacity. */
void hsm_wbuf_free(hsm_wbuf *w)
{
	hsm_free_wipe(w->p, w->len);
	w->p = NULL;
	w->len = w->cap = 0;
}

void hsm_fail(hsm_wbuf *w, CK_RV rv)
{
	if (w->err == CKR_OK)
		w->err = rv;
}

/* too_large is the call's answer to arguments too long to carry. */
static CK_RV too_large(const hsm_wbuf *w)
{
	return w->too_large != CKR_OK ? w->too_large : CKR_ARGUMENTS_BAD;
}

static int grow(hsm_wbuf *w, size_t n)
{
	if (w->err != CKR_OK)
		return 0;
	/* A request longer than a frame may be is refused here with the rv
	 * the daemon gives a request over its bound: the caller's arguments
	 * are too big to carry. */
	if (n > HSM_MAX_FRAME || w->len > HSM_MAX_FRAME + 4 - n) {
		hsm_fail(w, too_large(w));
		return 0;
	}
	if (w->len + n <= w->cap)
		return 1;
	size_t cap = w->cap ? w->cap : 256;
	while (cap < w->len + n)
		cap *= 2;
	uint8_t *p = malloc(cap);
	if (p == NULL) {
		hsm_fail(w, CKR_HOST_MEMORY);
		return 0;
	}
	if (w->len > 0)
		memcpy(p, w->p, w->len);
	hsm_free_wipe(w->p, w->len);
	w->p = p;
	w->cap = cap;
	return 1;
}

void hsm_put_raw(hsm_wbuf *w, const void *p, size_t n)
{
	if (n == 0 || !grow(w, n))
		return;
	memcpy(w->p + w->len, p, n);
	w->len += n;
}

/* put_small appends a number's few bytes: in place when the buffer has
 * room and the frame stays within what grow allows (the numbers of a
 * request are most of its puts, and n is a constant the compiler turns
 * into one store), else through hsm_put_raw. */
static inline void put_small(hsm_wbuf *w, const uint8_t *b, size_t n)
{
	if (w->err == CKR_OK && w->len + n <= w->cap && w->len + n <= HSM_MAX_FRAME + 4) {
		memcpy(w->p + w->len, b, n);
		w->len += n;
		return;
	}
	hsm_put_raw(w, b, n);
}

void hsm_put_u8(hsm_wbuf *w, uint8_t v)
{
	put_small(w, &v, 1);
}

void hsm_put_u16(hsm_wbuf *w, uint16_t v)
{
	uint8_t b[2] = {(uint8_t)(v >> 8), (uint8_t)v};
	put_small(w, b, 2);
}

void hsm_put_u32(hsm_wbuf *w, uint32_t v)
{
	uint8_t b[4];
	hsm_put_be32(b, v);
	put_small(w, b, 4);
}

void hsm_put_u64(hsm_wbuf *w, uint64_t v)
{
	uint8_t b[8];
	hsm_put_be64(b, v);
	put_small(w, b, 8);
}

static void put_bytes(hsm_wbuf *w, const void *p, CK_ULONG n, CK_RV bad)
{
	if (p == NULL) {
		if (n != 0)
			hsm_fail(w, bad);
		hsm_put_u32(w, HSM_NULL32);
		return;
	}
	if (n > HSM_MAX_BYTES) {
		hsm_fail(w, too_large(w));
		return;
	}
	hsm_put_u32(w, (uint32_t)n);
	if (!w->strip || bad != CKR_MECHANISM_PARAM_INVALID)
		hsm_put_raw(w, p, n);
}

void hsm_put_bytes(hsm_wbuf *w, const void *p, CK_ULONG n)
{
	put_bytes(w, p, n, CKR_ARGUMENTS_BAD);
}

void hsm_put_param_bytes(hsm_wbuf *w, const void *p, CK_ULONG n)
{
	put_bytes(w, p, n, CKR_MECHANISM_PARAM_INVALID);
}

void hsm_put_msg_bytes(hsm_wbuf *w, const void *p, CK_ULONG n)
{
	/* A NULL member of a message parameter is NULL whatever its length
	 * says: a decryption's pTag may be unset until the last part. */
	put_bytes(w, p, p == NULL ? 0 : n, CKR_MECHANISM_PARAM_INVALID);
}

void hsm_put_outspec(hsm_wbuf *w, int present, CK_ULONG capacity)
{
	hsm_put_u8(w, present ? 1 : 0);
	hsm_put_u64(w, capacity);
}

void hsm_put_outspec_prefetch(hsm_wbuf *w, int present, CK_ULONG capacity)
{
	w->out_at = w->len;
	if (!present && w->err == CKR_OK)
		w->prefetch_at = w->len;
	hsm_put_u8(w, present ? 1 : 2);
	hsm_put_u64(w, capacity);
}

const uint8_t *hsm_get_raw(hsm_rbuf *r, size_t n)
{
	if (r->bad || n > r->len - r->off) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

void hsm_get_raw_into(hsm_rbuf *r, void *dst, size_t n)
{
	const uint8_t *p = hsm_get_raw(r, n);
	if (p != NULL)
		memcpy(dst, p, n);
	else
		memset(dst, 0, n);
}

uint8_t hsm_get_u8(hsm_rbuf *r)
{
	const uint8_t *p = hsm_get_raw(r, 1);
	return p ? p[0] : 0;
}

uint32_t hsm_get_u32(hsm_rbuf *r)
{
	const uint8_t *p = hsm_get_raw(r, 4);
	return p ? hsm_be32(p) : 0;
}

uint64_t hsm_get_u64(hsm_rbuf *r)
{
	const uint8_t *p = hsm_get_raw(r, 8);
	return p ? hsm_be64(p) : 0;
}

CK_ULONG hsm_get_ulong(hsm_rbuf *r)
{
	uint64_t v = hsm_get_u64(r);
	if (v == HSM_UNAVAILABLE64)
		return CK_UNAVAILABLE_INFORMATION;
	if (!hsm_fits_ulong(v)) {
		r->bad = 1;
		return 0;
	}
	return (CK_ULONG)v;
}

const uint8_t *hsm_get_bytes(hsm_rbuf *r, uint32_t *n, int *isnull)
{
	uint32_t len = hsm_get_u32(r);
	*n = 0;
	*isnull = 0;
	if (r->bad)
		return NULL;
	if (len == HSM_NULL32) {
		*isnull = 1;
		return NULL;
	}
	if (len > HSM_MAX_BYTES) {
		r->bad = 1;
		return NULL;
	}
	const uint8_t *p = hsm_get_raw(r, len);
	if (p != NULL)
		*n = len;
	return p;
}

int hsm_get_end(const hsm_rbuf *r)
{
	return !r->bad && r->off == r->len;
}

void hsm_get_outbytes(hsm_rbuf *r, hsm_outbytes *o)
{
	int isnull;
	o->len = hsm_get_u64(r);
	o->data = hsm_get_bytes(r, &o->n, &isnull);
	if (!isnull && o->data == NULL && !r->bad)
		o->data = r->p + r->off; /* an empty, non-NULL value */
}

int hsm_outbytes_ok(const hsm_outbytes *o, const void *buf, CK_ULONG cap, CK_RV rv)
{
	if (!hsm_fits_ulong(o->len) || o->len == HSM_UNAVAILABLE64)
		return 0;
	/* Only the length came: an answer to a size query, or to a buffer too
	 * short. CKR_OK to a buffer promises the data in it. */
	if (o->data == NULL)
		return buf == NULL || rv != CKR_OK;
	/* Data came: the caller had a buffer, and it holds all of it. */
	return buf != NULL && o->n == o->len && o->len <= cap;
}

void hsm_outbytes_commit(const hsm_outbytes *o, void *buf, CK_ULONG_PTR len)
{
	*len = (CK_ULONG)o->len;
	if (o->data != NULL && o->n > 0)
		memcpy(buf, o->data, o->n);
}

static void get_ulongs(hsm_rbuf *r, hsm_outulongs *o)
{
	uint32_t n = hsm_get_u32(r);
	o->items = NULL;
	o->n = 0;
	if (r->bad || n == HSM_NULL32)
		return;
	if (n > HSM_MAX_ULONGS) {
		r->bad = 1;
		return;
	}
	o->items = hsm_get_raw(r, (size_t)n * 8);
	if (o->items != NULL)
		o->n = n;
}

void hsm_get_outulongs(hsm_rbuf *r, hsm_outulongs *o)
{
	o->count = hsm_get_u64(r);
	get_ulongs(r, o);
}

void hsm_get_ulongs(hsm_rbuf *r, hsm_outulongs *o)
{
	get_ulongs(r, o);
	o->count = o->n;
	if (o->items == NULL)
		r->bad = 1; /* a list is required here */
}

int hsm_outulongs_ok(const hsm_outulongs *o, const void *list, CK_ULONG cap, CK_RV rv)
{
	if (!hsm_fits_ulong(o->count) || o->count == HSM_UNAVAILABLE64)
		return 0;
	/* Only the count came: CKR_OK to a list promises the items in it. */
	if (o->items == NULL)
		return list == NULL || rv != CKR_OK;
	/* Items came: the caller has room for all of them. An empty list
	 * needs none: C_FindObjects(s, NULL, 0, &n) is valid. */
	if ((list == NULL && o->n != 0) || o->n != o->count || o->count > cap)
		return 0;
	for (uint32_t i = 0; i < o->n; i++)
		if (!hsm_fits_ulong(hsm_be64(o->items + 8 * (size_t)i)))
			return 0;
	return 1;
}

void hsm_outulongs_commit(const hsm_outulongs *o, CK_ULONG *list, CK_ULONG_PTR count)
{
	*count = (CK_ULONG)o->count;
	if (o->items == NULL)
		return;
	for (uint32_t i = 0; i < o->n; i++)
		list[i] = (CK_ULONG)hsm_be64(o->items + 8 * (size_t)i);
}
