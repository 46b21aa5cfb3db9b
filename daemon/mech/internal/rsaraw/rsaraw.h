/* rsaraw.h: an RSA private key held by OpenSSL, for the raw operation. */
#ifndef HSMEMU_RSARAW_H
#define HSMEMU_RSARAW_H

#include <stddef.h>
#include <openssl/evp.h>

typedef struct {
	const unsigned char *p;
	size_t n;
} rr_bytes;

/* rr_new builds a key from its big-endian parts: n, e, d, p, q, dp, dq,
 * qinv, in that order. NULL on failure. */
EVP_PKEY *rr_new(const rr_bytes parts[8]);
void rr_free(EVP_PKEY *k);
/* rr_private computes in^d mod n; in and out are the modulus' size. */
int rr_private(EVP_PKEY *k, const unsigned char *in, size_t n, unsigned char *out);

#endif
