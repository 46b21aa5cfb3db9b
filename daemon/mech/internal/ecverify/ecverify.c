/*
 * ecverify.c: see ecverify.h. Everything here is public (the key, the
 * digest, the signature), so nothing needs to be constant-time.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* EC_GROUP_precompute_mult: see ev_table */
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <pthread.h>

#include "ecverify.h"

static const int nids[3] = {NID_X9_62_prime256v1, NID_secp384r1, NID_secp521r1};
static EC_GROUP *groups[3];
static pthread_once_t groups_once = PTHREAD_ONCE_INIT;

static void groups_init(void)
{
	for (int i = 0; i < 3; i++)
		groups[i] = EC_GROUP_new_by_curve_name(nids[i]);
}

const EC_GROUP *ev_group(int nid)
{
	pthread_once(&groups_once, groups_init);
	for (int i = 0; i < 3; i++)
		if (nids[i] == nid)
			return groups[i];
	return NULL;
}

EC_POINT *ev_point(const EC_GROUP *g, const unsigned char *p, size_t n)
{
	EC_POINT *q = EC_POINT_new(g);
	/* oct2point checks the point is on the curve; an encoded infinity is
	 * one byte, refused by the caller's length check, and refused here. */
	if (!q || n == 0 || p[0] != POINT_CONVERSION_UNCOMPRESSED || !EC_POINT_oct2point(g, q, p, n, NULL) ||
	    EC_POINT_is_at_infinity(g, q)) {
		EC_POINT_free(q);
		return NULL;
	}
	return q;
}

void ev_point_free(EC_POINT *q) { EC_POINT_free(q); }

/*
 * OpenSSL keeps a table of multiples of a group's generator (a fixed table
 * for the standard generator, or one EC_GROUP_precompute_mult builds), and
 * multiplies the generator with it several times faster than any other
 * point. A copy of the group with q as its generator, and its table, gives
 * q the same speed. The call is deprecated in OpenSSL 3 (with the rest of
 * the low-level EC API), not removed; without it a verification falls back
 * to the plain double multiplication.
 */
EC_GROUP *ev_table(const EC_GROUP *g, const EC_POINT *q)
{
	EC_GROUP *t = EC_GROUP_dup(g);
	if (!t || !EC_GROUP_set_generator(t, q, EC_GROUP_get0_order(g), EC_GROUP_get0_cofactor(g)) ||
	    !EC_GROUP_precompute_mult(t, NULL)) {
		EC_GROUP_free(t);
		return NULL;
	}
	return t;
}

void ev_table_free(EC_GROUP *t) { EC_GROUP_free(t); }

/* SEC 1, 4.1.4: with w = s⁻¹, R = (e·w)·G + (r·w)·Q; valid when R is not
 * infinity and R.x mod n = r. */
int ev_verify(const EC_GROUP *g, const EC_POINT *q, const EC_GROUP *t, const unsigned char *e, size_t elen,
              const unsigned char *r, const unsigned char *s, size_t n)
{
	int ok = -1;
	EC_POINT *R = NULL, *R2 = NULL;
	BN_CTX *ctx = BN_CTX_new();
	if (!ctx)
		return -1;
	BN_CTX_start(ctx);
	BIGNUM *br = BN_CTX_get(ctx), *bs = BN_CTX_get(ctx), *be = BN_CTX_get(ctx), *w = BN_CTX_get(ctx),
	       *u1 = BN_CTX_get(ctx), *u2 = BN_CTX_get(ctx), *x = BN_CTX_get(ctx);
	const BIGNUM *order = EC_GROUP_get0_order(g);
	if (!x || !BN_bin2bn(r, (int)n, br) || !BN_bin2bn(s, (int)n, bs) || !BN_bin2bn(e, (int)elen, be))
		goto out;
	if (BN_is_zero(br) || BN_is_zero(bs) || BN_cmp(br, order) >= 0 || BN_cmp(bs, order) >= 0 ||
	    BN_cmp(be, order) >= 0) {
		ok = 0;
		goto out;
	}
	if (!BN_mod_inverse(w, bs, order, ctx) || !BN_mod_mul(u1, be, w, order, ctx) ||
	    !BN_mod_mul(u2, br, w, order, ctx) || !(R = EC_POINT_new(g)))
		goto out;
	if (t) {
		/* Both products from a table: u1 from the group's, u2 from q's. */
		if (!(R2 = EC_POINT_new(t)) || !EC_POINT_mul(g, R, u1, NULL, NULL, ctx) ||
		    !EC_POINT_mul(t, R2, u2, NULL, NULL, ctx) || !EC_POINT_add(g, R, R, R2, ctx))
			goto out;
	} else if (!EC_POINT_mul(g, R, u1, q, u2, ctx)) {
		goto out;
	}
	if (EC_POINT_is_at_infinity(g, R)) {
		ok = 0;
		goto out;
	}
	if (!EC_POINT_get_affine_coordinates(g, R, x, NULL, ctx) || !BN_nnmod(x, x, order, ctx))
		goto out;
	ok = BN_cmp(x, br) == 0;
out:
	EC_POINT_free(R2);
	EC_POINT_free(R);
	BN_CTX_end(ctx);
	BN_CTX_free(ctx);
	return ok;
}
