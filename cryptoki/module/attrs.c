/*
 * attrs.c: attribute arrays on the wire (docs/protocol.md, "Attribute
 * values"): templates in requests, C_GetAttributeValue's query and its
 * answers. Values of CK_ULONG attributes travel as 8 bytes big-endian
 * whatever the host's word size; the kind of each attribute comes from the
 * generated hsm_attr_kind (calls.Attrs).
 */
#include <string.h>

#include "hsm.h"

static void put_template(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n, int depth);

static void put_value(hsm_wbuf *w, const CK_ATTRIBUTE *a, int depth)
{
	const uint8_t *v = a->pValue;
	CK_ULONG len = a->ulValueLen;

	if (v == NULL && len != 0) {
		hsm_fail(w, CKR_ARGUMENTS_BAD);
		return;
	}
	switch (hsm_attr_kind(a->type)) {
	case HSM_ATTR_ULONG:
		if (v != NULL && len == sizeof(CK_ULONG)) {
			CK_ULONG x;
			memcpy(&x, v, sizeof x);
			hsm_put_u32(w, 8);
			hsm_put_u64(w, x);
			return;
		}
		break; /* any other length: unchanged, for the daemon to refuse */
	case HSM_ATTR_ULONGS:
		if (v != NULL && len % sizeof(CK_ULONG) == 0) {
			CK_ULONG n = len / sizeof(CK_ULONG);
			if (n > HSM_MAX_BYTES / 8) {
				hsm_fail(w, CKR_ARGUMENTS_BAD);
				return;
			}
			hsm_put_u32(w, (uint32_t)(n * 8));
			for (CK_ULONG i = 0; i < n; i++) {
				CK_ULONG x;
				memcpy(&x, v + i * sizeof(CK_ULONG), sizeof x);
				hsm_put_u64(w, x);
			}
			return;
		}
		break;
	case HSM_ATTR_TEMPLATE:
		if (v == NULL) {
			hsm_put_u8(w, 0);
			return;
		}
		if (len % sizeof(CK_ATTRIBUTE) != 0 || depth >= HSM_MAX_NESTING) {
			hsm_fail(w, CKR_ATTRIBUTE_VALUE_INVALID);
			return;
		}
		hsm_put_u8(w, 1);
		put_template(w, a->pValue, len / sizeof(CK_ATTRIBUTE), depth + 1);
		return;
	default:
		break;
	}
	hsm_put_bytes(w, v, len);
}

static void put_template(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n, int depth)
{
	if (t == NULL && n != 0) {
		hsm_fail(w, CKR_ARGUMENTS_BAD);
		return;
	}
	if (n > HSM_MAX_TEMPLATE) {
		hsm_fail(w, CKR_ARGUMENTS_BAD);
		return;
	}
	hsm_put_u32(w, (uint32_t)n);
	for (CK_ULONG i = 0; i < n && w->err == CKR_OK; i++) {
		hsm_put_u64(w, t[i].type);
		put_value(w, &t[i], depth);
	}
}

void hsm_put_template(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n)
{
	put_template(w, t, n, 0);
}

void hsm_put_query(hsm_wbuf *w, const CK_ATTRIBUTE *t, CK_ULONG n)
{
	if ((t == NULL && n != 0) || n > HSM_MAX_TEMPLATE) {
		hsm_fail(w, CKR_ARGUMENTS_BAD);
		return;
	}
	hsm_put_u32(w, (uint32_t)n);
	for (CK_ULONG i = 0; i < n; i++) {
		CK_ULONG len = t[i].ulValueLen, cap;
		/* Capacities in wire units (a host CK_ULONG is 8 bytes on the wire;
		 * a template counts attributes). */
		switch (hsm_attr_kind(t[i].type)) {
		case HSM_ATTR_ULONG:
			cap = len >= sizeof(CK_ULONG) ? 8 : 0;
			break;
		case HSM_ATTR_ULONGS:
			cap = len / sizeof(CK_ULONG) * 8;
			break;
		case HSM_ATTR_TEMPLATE:
			cap = len / sizeof(CK_ATTRIBUTE);
			break;
		default:
			cap = len;
			break;
		}
		hsm_put_u64(w, t[i].type);
		hsm_put_u8(w, t[i].pValue != NULL);
		hsm_put_u64(w, cap);
	}
}

/*
 * Answers. One routine walks them twice: first with commit = 0 to check the
 * whole reply against the caller's template (nothing is written when any of
 * it is wrong), then with commit = 1 to write.
 */

/* host_len converts a wire length of an attribute of the given kind into the
 * host's length; 0 when the wire length cannot be right. */
static int host_len(int kind, uint64_t wire, CK_ULONG *host)
{
	switch (kind) {
	case HSM_ATTR_ULONG:
		*host = wire == 8 ? sizeof(CK_ULONG) : (CK_ULONG)wire;
		return wire <= HSM_MAX_BYTES;
	case HSM_ATTR_ULONGS:
		*host = (CK_ULONG)(wire / 8 * sizeof(CK_ULONG));
		return wire % 8 == 0 && wire <= HSM_MAX_BYTES;
	case HSM_ATTR_TEMPLATE:
		*host = (CK_ULONG)(wire * sizeof(CK_ATTRIBUTE));
		return wire <= HSM_MAX_TEMPLATE;
	default:
		*host = (CK_ULONG)wire;
		return wire <= HSM_MAX_BYTES;
	}
}

/* copy_value writes a plain (non-template) value of wire length n into dst,
 * converting CK_ULONGs to the host's type. */
static void copy_value(int kind, const uint8_t *src, uint32_t n, uint8_t *dst)
{
	if (kind == HSM_ATTR_ULONG && n == 8) {
		CK_ULONG x = (CK_ULONG)hsm_be64(src);
		memcpy(dst, &x, sizeof x);
	} else if (kind == HSM_ATTR_ULONGS) {
		for (uint32_t i = 0; i < n / 8; i++) {
			CK_ULONG x = (CK_ULONG)hsm_be64(src + 8 * (size_t)i);
			memcpy(dst + i * sizeof(CK_ULONG), &x, sizeof x);
		}
	} else if (n > 0) {
		memcpy(dst, src, n);
	}
}

static int walk_nested(hsm_rbuf *r, CK_ATTRIBUTE *dst, CK_ULONG n, int commit, int *short_buf,
		       int depth);

/* walk_nested_value: one value inside a nested template, encoded as in a
 * request template. Written into dst->pValue when it fits; otherwise its
 * length becomes CK_UNAVAILABLE_INFORMATION and *short_buf is set. */
static int walk_nested_value(hsm_rbuf *r, CK_ATTRIBUTE *dst, int commit, int *short_buf, int depth)
{
	int kind = hsm_attr_kind(dst->type);
	if (kind == HSM_ATTR_TEMPLATE) {
		uint8_t present = hsm_get_u8(r);
		if (r->bad || present > 1)
			return 0;
		if (!present) {
			if (commit)
				dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
			return 1;
		}
		uint32_t n = hsm_get_u32(r);
		if (r->bad || n > HSM_MAX_TEMPLATE || depth >= HSM_MAX_NESTING)
			return 0;
		CK_ULONG room = dst->pValue ? dst->ulValueLen / sizeof(CK_ATTRIBUTE) : 0;
		int fits = dst->pValue != NULL && n <= room;
		/* Where there is no room the nested attributes are only skipped. */
		if (!walk_nested(r, fits ? dst->pValue : NULL, n, commit && fits, short_buf, depth + 1))
			return 0;
		if (commit) {
			dst->ulValueLen = n * sizeof(CK_ATTRIBUTE);
			if (dst->pValue != NULL && !fits) {
				dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
				*short_buf = 1;
			}
		}
		return 1;
	}
	uint32_t n;
	int isnull;
	const uint8_t *v = hsm_get_bytes(r, &n, &isnull);
	CK_ULONG hl;
	if (r->bad || !host_len(kind, n, &hl))
		return 0;
	if (!commit)
		return 1;
	if (isnull) {
		dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
	} else if (dst->pValue == NULL) {
		dst->ulValueLen = hl;
	} else if (hl <= dst->ulValueLen) {
		copy_value(kind, v, n, dst->pValue);
		dst->ulValueLen = hl;
	} else {
		dst->ulValueLen = CK_UNAVAILABLE_INFORMATION;
		*short_buf = 1;
	}
	return 1;
}

/* walk_nested: n nested attributes (u64 type, then the value) into dst,
 * which has room for n of them, or is NULL to only skip them. Nothing is
 * written unless commit. */
static int walk_nested(hsm_rbuf *r, CK_ATTRIBUTE *dst, CK_ULONG n, int commit, int *short_buf,
		       int depth)
{
	for (CK_ULONG i = 0; i < n; i++) {
		uint64_t type = hsm_get_u64(r);
		if (r->bad || !hsm_fits_ulong(type))
			return 0;
		CK_ATTRIBUTE scratch = {(CK_ATTRIBUTE_TYPE)type, NULL, 0};
		CK_ATTRIBUTE *a = &scratch;
		if (dst != NULL && commit) {
			dst[i].type = (CK_ATTRIBUTE_TYPE)type;
			a = &dst[i];
		}
		if (!walk_nested_value(r, a, commit && dst != NULL, short_buf, depth))
			return 0;
	}
	return 1;
}

static int walk_answers(hsm_rbuf *r, CK_ATTRIBUTE *t, CK_ULONG n, CK_RV rv, int commit, int *short_buf)
{
	uint32_t count = hsm_get_u32(r);
	if (r->bad || count != n)
		return 0;
	for (CK_ULONG i = 0; i < n; i++) {
		int kind = hsm_attr_kind(t[i].type);
		uint64_t wire = hsm_get_u64(r);
		uint32_t vn;
		int isnull;
		const uint8_t *v = hsm_get_bytes(r, &vn, &isnull);
		if (r->bad)
			return 0;
		if (wire == HSM_UNAVAILABLE64) {
			/* Sensitive, invalid or too short: never under CKR_OK,
			 * which says every attribute was answered. */
			if (!isnull || rv == CKR_OK)
				return 0;
			if (commit)
				t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
			continue;
		}
		CK_ULONG hl;
		if (!host_len(kind, wire, &hl))
			return 0;
		if (isnull) {
			/* Only the length: the answer to a NULL pValue. A
			 * buffer gets its value, or CK_UNAVAILABLE_INFORMATION
			 * when too short. */
			if (t[i].pValue != NULL)
				return 0;
			if (commit)
				t[i].ulValueLen = hl;
			continue;
		}
		/* A value came: the caller had a buffer, and it holds all of it. */
		if (t[i].pValue == NULL || hl > t[i].ulValueLen)
			return 0;
		if (kind == HSM_ATTR_TEMPLATE) {
			/* The bytes hold a template: u32 count (= the length),
			 * then the attributes as in a request. */
			hsm_rbuf sub = {v, vn, 0, 0};
			uint32_t m = hsm_get_u32(&sub);
			if (sub.bad || m != wire ||
			    !walk_nested(&sub, t[i].pValue, m, commit, short_buf, 1) ||
			    !hsm_get_end(&sub))
				return 0;
		} else {
			if (vn != wire)
				return 0;
			if (commit)
				copy_value(kind, v, vn, t[i].pValue);
		}
		if (commit)
			t[i].ulValueLen = hl;
	}
	return 1;
}

void hsm_get_answers(hsm_rbuf *r, hsm_answers *a, const CK_ATTRIBUTE *t, CK_ULONG n, CK_RV rv)
{
	int short_buf = 0;
	a->at = *r;
	/* The check pass never writes through t. */
	if (!walk_answers(r, (CK_ATTRIBUTE *)t, n, rv, 0, &short_buf))
		r->bad = 1;
}

CK_RV hsm_answers_commit(const hsm_answers *a, CK_ATTRIBUTE *t, CK_ULONG n, CK_RV rv)
{
	hsm_rbuf r = a->at;
	int short_buf = 0;
	walk_answers(&r, t, n, rv, 1, &short_buf);
	if (short_buf && rv == CKR_OK)
		rv = CKR_BUFFER_TOO_SMALL;
	return rv;
}
