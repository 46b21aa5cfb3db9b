/*
 * heldwrap.c: held.c's sections for PKCS#11 3.2's C_WrapKeyAuthenticated
 * (docs/protocol.md, "Results ahead of the follow-up call"):
 *
 *   wraptrips  an AES-GCM authenticated wrap under an IV of the token's
 *              counter costs one round trip in both calling conventions.
 *   wraprules  the IV and the tag come with the wrapped key and only with
 *              it, and C_UnwrapKeyAuthenticated makes the same key of
 *              them; a follow-up with other associated data gets its own
 *              wrap under the IV after the query's (the query's IV never
 *              seals a second input); a short buffer and another query
 *              are answered from the held copy, writing nothing back.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "held.h"

#ifndef CKM_AES_GCM
#define CKM_AES_GCM 0x00001087UL
#endif

CK_FUNCTION_LIST_3_2 *f32;

static CK_BYTE wad[] = "tenant=42";
static CK_BYTE other_ad[] = "tenant=43";
/* The IV buffer a wrap passes: its first 32 bits are the fixed part of
 * the token's counter IVs. */
static const CK_BYTE fixed[12] = {0xBE, 0xEF, 0x00, 0x01};
#define WRAPPED_LEN 32 /* an AES-256 key's value, sealed */

static void gcm_wrap(CK_GCM_MESSAGE_PARAMS *p, CK_BYTE iv[12], CK_BYTE tag[16])
{
	memcpy(iv, fixed, 12);
	memset(tag, 0, 16);
	*p = (CK_GCM_MESSAGE_PARAMS){iv, 12, 32, CKG_GENERATE_COUNTER, tag, 128};
}

static int untouched(const CK_BYTE iv[12], const CK_BYTE tag[16])
{
	static const CK_BYTE zero[16];
	return memcmp(iv, fixed, 12) == 0 && memcmp(tag, zero, 16) == 0;
}

static uint64_t counter(const CK_BYTE iv[12])
{
	uint64_t c = 0;
	for (int i = 4; i < 12; i++)
		c = c << 8 | iv[i];
	return c;
}

/* wrap wraps the target key under the KEK with associated data ad. */
static CK_RV wrap(const keys *k, CK_GCM_MESSAGE_PARAMS *p, const CK_BYTE *ad, CK_ULONG adn, CK_BYTE_PTR out,
		  CK_ULONG_PTR len)
{
	CK_MECHANISM m = {CKM_AES_GCM, p, sizeof *p};
	return f32->C_WrapKeyAuthenticated(k->s, &m, k->kek, k->target, (CK_BYTE_PTR)ad, adn, out, len);
}

/* ---- wraptrips ---- */

static CK_RV wrap_op(const keys *k, int fam, int twocall)
{
	(void)fam;
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE iv[12], tag[16], out[128];
	CK_ULONG len = 0;
	CK_RV rv;
	gcm_wrap(&p, iv, tag);
	if (twocall) {
		if ((rv = wrap(k, &p, wad, sizeof wad - 1, NULL, &len)) != CKR_OK)
			return rv;
		/* A length query writes nothing back. */
		if (len != WRAPPED_LEN || !untouched(iv, tag))
			return CKR_GENERAL_ERROR;
	}
	len = sizeof out;
	if ((rv = wrap(k, &p, wad, sizeof wad - 1, out, &len)) != CKR_OK)
		return rv;
	return len == WRAPPED_LEN && !untouched(iv, tag) ? CKR_OK : CKR_GENERAL_ERROR;
}

static void test_wraptrips(void)
{
	begin("wraptrips");
	unsigned long per[2] = {0, 0};
	for (int twocall = 0; twocall < 2; twocall++) {
		unsigned long c1, t1, c2, t2;
		if (!measure_op(wrap_op, 0, twocall, 2, &c1, &t1) || !measure_op(wrap_op, 0, twocall, 12, &c2, &t2))
			continue;
		unsigned long trips = t2 - t1, calls = c2 - c1;
		per[twocall] = trips;
		printf("trips: %-12s %-8s %4.1f calls, %4.1f round trips an operation\n", "wrap-auth",
		       twocall ? "two-call" : "one-call", calls / 10.0, trips / 10.0);
		CHECK(trips == 10, "wrap-auth %s: %lu round trips for 10 wraps, want 10", twocall ? "two-call" : "one-call",
		      trips);
	}
	CHECK(per[0] == per[1], "wrap-auth: one call %lu round trips, length query first %lu", per[0], per[1]);
	end();
}

/* ---- wraprules ---- */

/* same_key says whether key u encrypts a block as the target key does. */
static int same_key(const keys *k, CK_OBJECT_HANDLE u)
{
	CK_MECHANISM ecb = {CKM_AES_ECB, NULL, 0};
	CK_BYTE a[16], b[16];
	CK_ULONG an = sizeof a, bn = sizeof b;
	return f->C_EncryptInit(k->s, &ecb, k->target) == CKR_OK && f->C_Encrypt(k->s, msg, 16, a, &an) == CKR_OK &&
	       f->C_EncryptInit(k->s, &ecb, u) == CKR_OK && f->C_Encrypt(k->s, msg, 16, b, &bn) == CKR_OK && an == 16 &&
	       bn == 16 && memcmp(a, b, 16) == 0;
}

/* unwrap makes a key of a wrap's IV, tag and ciphertext. */
static CK_RV unwrap(const keys *k, CK_BYTE iv[12], CK_BYTE tag[16], CK_BYTE_PTR ct, CK_ULONG n, const CK_BYTE *ad,
		    CK_ULONG adn, CK_OBJECT_HANDLE *u)
{
	static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls},
			    {CKA_KEY_TYPE, &kt, sizeof kt},
			    {CKA_TOKEN, &no, sizeof no},
			    {CKA_ENCRYPT, &yes, sizeof yes}};
	CK_GCM_MESSAGE_PARAMS p = {iv, 12, 0, CKG_NO_GENERATE, tag, 128};
	CK_MECHANISM m = {CKM_AES_GCM, &p, sizeof p};
	return f32->C_UnwrapKeyAuthenticated(k->s, &m, k->kek, ct, n, t, sizeof t / sizeof t[0], (CK_BYTE_PTR)ad, adn, u);
}

static void wrap_rules(const keys *k)
{
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE iv[12], tag[16], ct[128];
	CK_ULONG len;
	CK_OBJECT_HANDLE u;

	/* One call: the counter now. */
	gcm_wrap(&p, iv, tag);
	len = sizeof ct;
	if (!OK(wrap(k, &p, wad, sizeof wad - 1, ct, &len)))
		return;
	uint64_t c = counter(iv);

	/* The same arguments: the query's wrap, its IV and tag written back
	 * with it, which unwrap to the same key. */
	gcm_wrap(&p, iv, tag);
	len = 0;
	OK(wrap(k, &p, wad, sizeof wad - 1, NULL, &len));
	CHECK(len == WRAPPED_LEN && untouched(iv, tag), "length query: %lu, or something written back", len);
	len = sizeof ct;
	OK(wrap(k, &p, wad, sizeof wad - 1, ct, &len));
	CHECK(len == WRAPPED_LEN && counter(iv) == c + 1, "same arguments: %lu bytes, counter %llu after %llu", len,
	      (unsigned long long)counter(iv), (unsigned long long)c);
	if (OK(unwrap(k, iv, tag, ct, len, wad, sizeof wad - 1, &u)))
		CHECK(same_key(k, u), "the held wrap unwraps to another key");
	c = counter(iv);

	/* Other associated data: its own wrap, under the IV after the
	 * query's, bound to that data. */
	gcm_wrap(&p, iv, tag);
	len = 0;
	OK(wrap(k, &p, wad, sizeof wad - 1, NULL, &len));
	len = sizeof ct;
	OK(wrap(k, &p, other_ad, sizeof other_ad - 1, ct, &len));
	CHECK(len == WRAPPED_LEN && counter(iv) == c + 2, "other associated data: %lu bytes, counter %llu after %llu",
	      len, (unsigned long long)counter(iv), (unsigned long long)c);
	if (OK(unwrap(k, iv, tag, ct, len, other_ad, sizeof other_ad - 1, &u)))
		CHECK(same_key(k, u), "the other data's wrap unwraps to another key");
	EXPECT(unwrap(k, iv, tag, ct, len, wad, sizeof wad - 1, &u), CKR_WRAPPED_KEY_INVALID);
	c = counter(iv);

	/* A short buffer and another query: from the held copy, nothing
	 * written back; then the follow-up gets it. */
	gcm_wrap(&p, iv, tag);
	len = 0;
	OK(wrap(k, &p, wad, sizeof wad - 1, NULL, &len));
	len = 10;
	EXPECT(wrap(k, &p, wad, sizeof wad - 1, ct, &len), CKR_BUFFER_TOO_SMALL);
	CHECK(len == WRAPPED_LEN && untouched(iv, tag), "short buffer: %lu, or something written back", len);
	len = 0;
	OK(wrap(k, &p, wad, sizeof wad - 1, NULL, &len));
	CHECK(len == WRAPPED_LEN && untouched(iv, tag), "query again: %lu, or something written back", len);
	len = sizeof ct;
	OK(wrap(k, &p, wad, sizeof wad - 1, ct, &len));
	CHECK(len == WRAPPED_LEN && counter(iv) == c + 1, "after a short buffer: %lu bytes, counter %llu after %llu", len,
	      (unsigned long long)counter(iv), (unsigned long long)c);
	if (OK(unwrap(k, iv, tag, ct, len, wad, sizeof wad - 1, &u)))
		CHECK(same_key(k, u), "after a short buffer: unwraps to another key");
}

static void test_wraprules(void)
{
	begin("wraprules");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	if (OK(f->C_Initialize(&ia))) {
		keys k;
		if (open_keys(&k))
			wrap_rules(&k);
		OK(f->C_Finalize(NULL));
	}
	end();
}

void test_wrapauth(void)
{
	test_wraptrips();
	test_wraprules();
}
