/*
 * rsaraw.c: see rsaraw.h. OpenSSL blinds the operation, uses the CRT and
 * checks the CRT result against the public exponent (a fault would leak
 * a prime), all constant-time where it matters.
 */
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include "rsaraw.h"

static const char *names[8] = {
	OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,         OSSL_PKEY_PARAM_RSA_D,
	OSSL_PKEY_PARAM_RSA_FACTOR1,   OSSL_PKEY_PARAM_RSA_FACTOR2,   OSSL_PKEY_PARAM_RSA_EXPONENT1,
	OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1,
};

EVP_PKEY *rr_new(const rr_bytes parts[8])
{
	EVP_PKEY *key = NULL;
	BIGNUM *bn[8] = {0};
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	if (!bld)
		return NULL;
	for (int i = 0; i < 8; i++) {
		/* The private parts live in OpenSSL's secure heap when it has one. */
		bn[i] = i < 2 ? BN_new() : BN_secure_new();
		if (!bn[i] || !BN_bin2bn(parts[i].p, (int)parts[i].n, bn[i]) ||
		    !OSSL_PARAM_BLD_push_BN(bld, names[i], bn[i]))
			goto out;
	}
	params = OSSL_PARAM_BLD_to_param(bld);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) <= 0 ||
	    EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_KEYPAIR, params) <= 0)
		key = NULL;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params); /* its secure part is cleared as it is freed */
	OSSL_PARAM_BLD_free(bld);
	for (int i = 0; i < 8; i++)
		BN_clear_free(bn[i]);
	return key;
}

void rr_free(EVP_PKEY *k) { EVP_PKEY_free(k); }

int rr_private(EVP_PKEY *k, const unsigned char *in, size_t n, unsigned char *out)
{
	size_t outlen = n;
	int ok = 0;
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k, NULL);
	if (ctx && EVP_PKEY_decrypt_init(ctx) > 0 && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_NO_PADDING) > 0 &&
	    EVP_PKEY_decrypt(ctx, out, &outlen, in, n) > 0 && outlen == n)
		ok = 1;
	EVP_PKEY_CTX_free(ctx);
	return ok;
}
