/*
 * held.h: what held.c's token and counts give its other sections
 * (heldmsg.c, heldwrap.c); the checks and sections are ctest.h's. The
 * PKCS#11 3.0 declarations the system's header may lack come from the
 * module's own p11compat.h.
 */
#ifndef HSMEMU_E2E_HELD_H
#define HSMEMU_E2E_HELD_H

#include <p11-kit/pkcs11.h>

#include "ctest.h"
#include "p11compat.h"

/* ---- the module, the token and the keys ---- */

extern CK_FUNCTION_LIST *f;
extern CK_FUNCTION_LIST_3_0 *f3;
/* The slot of the token setup made. */
extern CK_SLOT_ID slot;

/* A logged-in session and its session-object keys: aes has a fixed value
 * (CKA_ENCRYPT, CKA_DECRYPT), ec_priv and ec_pub are a P-256 pair. */
typedef struct {
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE aes, kek, target, ec_priv, ec_pub;
} keys;

int open_keys(keys *k);
/* verifies_over checks an ECDSA signature of 32 bytes of data. */
int verifies_over(const keys *k, const CK_BYTE *data, const CK_BYTE *sig, CK_ULONG n);

extern CK_BYTE msg[100];

/* ---- counts ---- */

/* op runs one operation of family fam; with twocall, each output's
 * length is asked for first. */
typedef CK_RV (*op_fn)(const keys *k, int fam, int twocall);
/* measure_op runs n operations in a fresh initialisation and returns the
 * module's counts for the whole of it (HSMEMU_MODULE_STATS). */
int measure_op(op_fn op, int fam, int twocall, int n, unsigned long *calls, unsigned long *trips);

/* ---- heldmsg.c ---- */

void test_messages(void);

/* ---- heldlock.c ---- */

void test_fulltable(void);
void test_forklock(void);

/* ---- heldfin.c ---- */

void test_finrace(void);

/* ---- heldwrap.c ---- */

extern CK_FUNCTION_LIST_3_2 *f32;
void test_wrapauth(void);

#endif
