/* ecverify.h: ECDSA verification on the NIST prime curves with OpenSSL. */
#ifndef HSMEMU_ECVERIFY_H
#define HSMEMU_ECVERIFY_H

#include <stddef.h>
#include <openssl/ec.h>

/* ev_group returns the shared group of a curve (an OpenSSL NID), made
 * once; NULL if OpenSSL has none. */
const EC_GROUP *ev_group(int nid);
/* ev_point parses an uncompressed point and checks that it is on the
 * curve and not the point at infinity. NULL if it is not. */
EC_POINT *ev_point(const EC_GROUP *g, const unsigned char *p, size_t n);
void ev_point_free(EC_POINT *q);
/* ev_table makes a copy of the group whose generator is q, with a table of
 * q's multiples, so that u·q costs what u·G does. NULL on failure. */
EC_GROUP *ev_table(const EC_GROUP *g, const EC_POINT *q);
void ev_table_free(EC_GROUP *t);
/* ev_verify checks an ECDSA signature (r, s, each n bytes) over e, the
 * digest already converted to an integer mod the order (elen bytes): 1
 * valid, 0 invalid, -1 an error of OpenSSL's. t is q's table or NULL. */
int ev_verify(const EC_GROUP *g, const EC_POINT *q, const EC_GROUP *t, const unsigned char *e, size_t elen,
              const unsigned char *r, const unsigned char *s, size_t n);

#endif
