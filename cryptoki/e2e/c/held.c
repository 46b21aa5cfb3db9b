/*
 * held.c: results ahead of the follow-up call, through the module against
 * the real daemon (docs/protocol.md, "Results ahead of the follow-up
 * call").
 *
 *   e2e-held MODULE.so
 *
 * HSMEMU_SOCKET names a running `hsmemu serve` (cryptoki/e2e/ctest_test.go
 * starts one and runs this with the normal and the ASan/UBSan module).
 * Sections:
 *
 *   trips    each operation family in both calling conventions, one call
 *            with a buffer large enough and the length query first: the
 *            module's own counts (HSMEMU_MODULE_STATS) say how many round
 *            trips an operation costs, and both conventions cost the same,
 *            one for a single-part operation.
 *   input    a follow-up that brings other input than its length query
 *            gets the output of its own input (PKCS#11 5.2: a size query
 *            only returns a length), whether the length query's result
 *            is held or not, and a short buffer or another query between.
 *   rules    PKCS#11's operation state while a result is held: a new Init
 *            is CKR_OPERATION_ACTIVE, CKR_BUFFER_TOO_SMALL and a repeated
 *            query keep it, the follow-up ends it, an error (the daemon's
 *            or the module's) ends it, C_SessionCancel, an Init with no
 *            mechanism, C_CloseSession and C_Logout discard it, a mutating
 *            call flushes a deferred Init behind the cancel it owes, a
 *            forked child sees nothing of it.
 *   threads  threads with a session each in the length-query-first
 *            convention, and threads taking turns on one shared session
 *            (the query on one thread, the follow-up on another).
 *   fulltable (heldlock.c) with the module's table of owed cancels full,
 *            a follow-up that waits for a stopped daemon holds none of
 *            the module's locks, and another thread's call goes on.
 *   forklock (heldlock.c) fork() waits for a thread inside the module's
 *            lock, so the child inherits its tables whole.
 *   finrace  (heldfin.c) a C_WaitForSlotEvent that C_Finalize overtakes
 *            while it is about to lock the module's mutexes.
 *   messages the message-based calls (heldmsg.c): their round trips in
 *            both conventions, what the parameter gets back, other input
 *            at the follow-up, a short buffer, discarding.
 *   wrap...  C_WrapKeyAuthenticated (heldwrap.c): its round trips in both
 *            conventions, the IV and the tag written back, unwrapping,
 *            other associated data at the follow-up, a short buffer.
 *
 * Output as e2e.c's: "FAIL [section] held.c:LINE: ...", "SECTION name: N
 * passed, M failed in Ts", and last "e2e: N passed, M failed".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "held.h"

#ifndef CKM_AES_KEY_WRAP_KWP
#define CKM_AES_KEY_WRAP_KWP 0x0000210bUL
#endif

/* ---- the token and the keys ---- */

CK_FUNCTION_LIST *f;
CK_FUNCTION_LIST_3_0 *f3;
CK_SLOT_ID slot;
static const char so_pin[] = "so-secret-held";
static const char user_pin[] = "user-secret-held";
#define PIN(p) (CK_UTF8CHAR_PTR)(p), (CK_ULONG)strlen(p)

static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static int make_token(void)
{
	CK_UTF8CHAR label[32];
	ctest_label(label, "held");
	if (!OK(f->C_InitToken(0, PIN(so_pin), label)))
		return 0;
	if ((slot = ctest_slot_of(f, label)) == 0)
		return 0;
	CK_SESSION_HANDLE s;
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
	OK(f->C_Login(s, CKU_SO, PIN(so_pin)));
	OK(f->C_InitPIN(s, PIN(user_pin)));
	OK(f->C_Logout(s));
	OK(f->C_CloseSession(s));
	return 1;
}

static CK_RV gen_aes(CK_SESSION_HANDLE s, CK_BBOOL extractable, CK_OBJECT_HANDLE *h)
{
	CK_ULONG len = 32;
	CK_MECHANISM m = {CKM_AES_KEY_GEN, NULL, 0};
	CK_ATTRIBUTE t[] = {
		{CKA_TOKEN, &no, sizeof no},         {CKA_VALUE_LEN, &len, sizeof len},
		{CKA_ENCRYPT, &yes, sizeof yes},     {CKA_DECRYPT, &yes, sizeof yes},
		{CKA_WRAP, &yes, sizeof yes},        {CKA_UNWRAP, &yes, sizeof yes},
		{CKA_EXTRACTABLE, &extractable, 1}, {CKA_SENSITIVE, &yes, sizeof yes},
	};
	return f->C_GenerateKey(s, &m, t, sizeof t / sizeof t[0], h);
}

static CK_RV gen_ec(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *pub, CK_OBJECT_HANDLE *priv)
{
	static CK_BYTE p256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
	CK_MECHANISM m = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
	CK_ATTRIBUTE pt[] = {{CKA_TOKEN, &no, sizeof no}, {CKA_EC_PARAMS, p256, sizeof p256}, {CKA_VERIFY, &yes, sizeof yes}};
	CK_ATTRIBUTE kt[] = {{CKA_TOKEN, &no, sizeof no}, {CKA_SIGN, &yes, sizeof yes}, {CKA_PRIVATE, &yes, sizeof yes}};
	return f->C_GenerateKeyPair(s, &m, pt, 3, kt, 3, pub, priv);
}

/* fixed_aes: a session-object AES key of a fixed value, so a ciphertext
 * made once decrypts under every initialisation's copy. */
static CK_RV fixed_aes(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *h)
{
	static CK_BYTE value[32] = "0123456789abcdef0123456789abcdef";
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &cls, sizeof cls},   {CKA_KEY_TYPE, &kt, sizeof kt},
		{CKA_TOKEN, &no, sizeof no},     {CKA_VALUE, value, sizeof value},
		{CKA_ENCRYPT, &yes, sizeof yes}, {CKA_DECRYPT, &yes, sizeof yes},
	};
	return f->C_CreateObject(s, t, sizeof t / sizeof t[0], h);
}

/* open_keys: a logged-in session and its session-object keys. */
int open_keys(keys *k)
{
	memset(k, 0, sizeof *k);
	if (!OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &k->s)))
		return 0;
	CK_RV rv = f->C_Login(k->s, CKU_USER, PIN(user_pin));
	if (rv != CKR_USER_ALREADY_LOGGED_IN && !OK(rv))
		return 0;
	return OK(fixed_aes(k->s, &k->aes)) && OK(gen_aes(k->s, CK_FALSE, &k->kek)) &&
	       OK(gen_aes(k->s, CK_TRUE, &k->target)) && OK(gen_ec(k->s, &k->ec_pub, &k->ec_priv));
}

/* ---- operations, in either convention ---- */

static CK_BYTE iv[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
CK_BYTE msg[100] = "the message";

/* out calls fn for its output: with twocall, a size query first. */
#define OUT(twocall, buf, len, expr)                                  \
	do {                                                          \
		CK_RV r_;                                             \
		if (twocall) {                                        \
			CK_BYTE_PTR save_ = buf;                      \
			buf = NULL;                                   \
			len = 0;                                      \
			r_ = (expr);                                  \
			buf = save_;                                  \
			if (r_ != CKR_OK)                             \
				return r_;                            \
		}                                                     \
		r_ = (expr);                                          \
		if (r_ != CKR_OK)                                     \
			return r_;                                    \
	} while (0)

enum family { F_SIGN, F_SIGN_FINAL, F_ENCRYPT, F_DECRYPT, F_DIGEST, F_DIGEST_FINAL, F_WRAP, F_ENCRYPT_UPDATE,
	      F_DECRYPT_UPDATE, F_WRAP_SIGN, F_COUNT };
static const char *family_name[F_COUNT] = {"sign",         "sign-final", "encrypt",        "decrypt",
					   "digest",       "digest-final", "wrap",       "encrypt-update",
					   "decrypt-update", "wrap-sign"};
/* Round trips an operation costs once its Init is deferred: the Updates
 * of the multi-part forms cost one each, with an output or without; a
 * wrap, which leaves no operation, lets the Init after it wait too. */
static const int family_trips[F_COUNT] = {1, 2, 1, 1, 1, 2, 1, 3, 2, 2};

static CK_BYTE ct[128];
static CK_ULONG ct_len;

static CK_RV run_op(const keys *k, int fam, int twocall)
{
	CK_BYTE out_[256];
	CK_BYTE_PTR out = out_;
	CK_ULONG len = sizeof out_;
	CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
	CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
	CK_MECHANISM ecdsa_sha = {CKM_ECDSA_SHA256, NULL, 0};
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_KWP, NULL, 0};
	CK_RV rv;
	switch (fam) {
	case F_SIGN:
		if ((rv = f->C_SignInit(k->s, &ecdsa, k->ec_priv)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_Sign(k->s, msg, 32, out, &len));
		return len == 64 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_SIGN_FINAL:
		if ((rv = f->C_SignInit(k->s, &ecdsa_sha, k->ec_priv)) != CKR_OK)
			return rv;
		if ((rv = f->C_SignUpdate(k->s, msg, sizeof msg)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_SignFinal(k->s, out, &len));
		return len == 64 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_ENCRYPT:
		if ((rv = f->C_EncryptInit(k->s, &cbc, k->aes)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_Encrypt(k->s, msg, sizeof msg, out, &len));
		return len == 112 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_DECRYPT:
		if ((rv = f->C_DecryptInit(k->s, &cbc, k->aes)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_Decrypt(k->s, ct, ct_len, out, &len));
		return len == sizeof msg && memcmp(out, msg, sizeof msg) == 0 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_DIGEST:
		if ((rv = f->C_DigestInit(k->s, &sha)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_Digest(k->s, msg, sizeof msg, out, &len));
		return len == 32 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_DIGEST_FINAL:
		if ((rv = f->C_DigestInit(k->s, &sha)) != CKR_OK)
			return rv;
		if ((rv = f->C_DigestUpdate(k->s, msg, sizeof msg)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_DigestFinal(k->s, out, &len));
		return len == 32 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_WRAP:
		len = sizeof out_;
		OUT(twocall, out, len, f->C_WrapKey(k->s, &kwp, k->kek, k->target, out, &len));
		return len == 40 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_WRAP_SIGN:
		len = sizeof out_;
		OUT(twocall, out, len, f->C_WrapKey(k->s, &kwp, k->kek, k->target, out, &len));
		if (len != 40)
			return CKR_GENERAL_ERROR;
		if ((rv = f->C_SignInit(k->s, &ecdsa, k->ec_priv)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_Sign(k->s, msg, 32, out, &len));
		return len == 64 ? CKR_OK : CKR_GENERAL_ERROR;
	case F_ENCRYPT_UPDATE: {
		/* Two parts of 100 bytes, then the padded last block. */
		CK_ULONG total = 0;
		if ((rv = f->C_EncryptInit(k->s, &cbc, k->aes)) != CKR_OK)
			return rv;
		for (int i = 0; i < 2; i++) {
			len = sizeof out_;
			OUT(twocall, out, len, f->C_EncryptUpdate(k->s, msg, sizeof msg, out, &len));
			total += len;
		}
		len = sizeof out_;
		OUT(twocall, out, len, f->C_EncryptFinal(k->s, out, &len));
		return total + len == 208 ? CKR_OK : CKR_GENERAL_ERROR;
	}
	case F_DECRYPT_UPDATE: {
		CK_ULONG got;
		if ((rv = f->C_DecryptInit(k->s, &cbc, k->aes)) != CKR_OK)
			return rv;
		len = sizeof out_;
		OUT(twocall, out, len, f->C_DecryptUpdate(k->s, ct, ct_len, out, &len));
		got = len;
		len = sizeof out_ - got;
		CK_BYTE_PTR rest = out + got;
		OUT(twocall, rest, len, f->C_DecryptFinal(k->s, rest, &len));
		return got + len == sizeof msg && memcmp(out, msg, sizeof msg) == 0 ? CKR_OK : CKR_GENERAL_ERROR;
	}
	default:
		return CKR_GENERAL_ERROR;
	}
}

/* ---- trips ---- */

static char stats_path[256];

/* last_stats reads the counts C_Finalize appended last. */
static int last_stats(unsigned long *calls, unsigned long *trips)
{
	FILE *fp = fopen(stats_path, "r");
	if (fp == NULL)
		return 0;
	char line[256];
	int got = 0;
	while (fgets(line, sizeof line, fp) != NULL) {
		long pid;
		if (sscanf(line, "hsmemu-pkcs11: pid %ld: %lu calls, %lu round trips", &pid, calls, trips) == 3 &&
		    pid == (long)getpid())
			got = 1;
	}
	fclose(fp);
	return got;
}

int measure_op(op_fn op, int fam, int twocall, int n, unsigned long *calls, unsigned long *trips)
{
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	if (!OK(f->C_Initialize(&ia)))
		return 0;
	keys k;
	int ok = open_keys(&k);
	for (int i = 0; ok && i < n; i++)
		ok = EXPECT(op(&k, fam, twocall), CKR_OK);
	OK(f->C_Finalize(NULL));
	return ok && CHECK(last_stats(calls, trips), "no counts in %s", stats_path);
}

/* measure runs n operations in a fresh initialisation and returns the
 * module's counts for the whole of it. */
static int measure(enum family fam, int twocall, int n, unsigned long *calls, unsigned long *trips)
{
	return measure_op(run_op, fam, twocall, n, calls, trips);
}

static void test_trips(void)
{
	begin("trips");

	for (int fam = 0; fam < F_COUNT; fam++) {
		unsigned long per[2] = {0, 0};
		for (int twocall = 0; twocall < 2; twocall++) {
			unsigned long c1, t1, c2, t2;
			/* The first operation pays for the Init's first
			 * acceptance; the difference is what ten more cost. */
			if (!measure(fam, twocall, 2, &c1, &t1) || !measure(fam, twocall, 12, &c2, &t2))
				continue;
			unsigned long trips = t2 - t1, calls = c2 - c1;
			per[twocall] = trips;
			printf("trips: %-12s %-8s %4.1f calls, %4.1f round trips an operation\n", family_name[fam],
			       twocall ? "two-call" : "one-call", calls / 10.0, trips / 10.0);
			CHECK(trips == 10ul * (unsigned long)family_trips[fam], "%s %s: %lu round trips for 10 operations, want %d",
			      family_name[fam], twocall ? "two-call" : "one-call", trips, 10 * family_trips[fam]);
		}
		CHECK(per[0] == per[1], "%s: one call %lu round trips, length query first %lu", family_name[fam], per[0],
		      per[1]);
	}
	end();
}

/* ---- input ---- */

enum ifam { I_DIGEST, I_HMAC, I_CBC, I_ECB, I_DECRYPT, I_COUNT };
static const char *ifam_name[I_COUNT] = {"digest", "hmac", "cbc-pad", "ecb", "decrypt"};

static CK_RV in_init(const keys *k, CK_OBJECT_HANDLE mac, int fam)
{
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0}, hm = {CKM_SHA256_HMAC, NULL, 0};
	CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv}, ecb = {CKM_AES_ECB, NULL, 0};
	switch (fam) {
	case I_DIGEST:
		return f->C_DigestInit(k->s, &sha);
	case I_HMAC:
		return f->C_SignInit(k->s, &hm, mac);
	case I_CBC:
		return f->C_EncryptInit(k->s, &cbc, k->aes);
	case I_ECB:
		return f->C_EncryptInit(k->s, &ecb, k->aes);
	default:
		return f->C_DecryptInit(k->s, &cbc, k->aes);
	}
}

static CK_RV in_call(const keys *k, int fam, CK_BYTE_PTR in, CK_ULONG n, CK_BYTE_PTR out, CK_ULONG_PTR len)
{
	switch (fam) {
	case I_DIGEST:
		return f->C_Digest(k->s, in, n, out, len);
	case I_HMAC:
		return f->C_Sign(k->s, in, n, out, len);
	case I_CBC:
	case I_ECB:
		return f->C_Encrypt(k->s, in, n, out, len);
	default:
		return f->C_Decrypt(k->s, in, n, out, len);
	}
}

static void test_input(void)
{
	begin("input");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	OK(f->C_Initialize(&ia));
	keys k;
	static CK_BYTE mac_value[32] = "a generic secret for the HMACs..";
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE gen = CKK_GENERIC_SECRET;
	CK_ATTRIBUTE mt[] = {{CKA_CLASS, &cls, sizeof cls},   {CKA_KEY_TYPE, &gen, sizeof gen},
			     {CKA_TOKEN, &no, sizeof no},     {CKA_SIGN, &yes, sizeof yes},
			     {CKA_VALUE, mac_value, sizeof mac_value}};
	CK_OBJECT_HANDLE mac;
	if (!open_keys(&k) || !OK(f->C_CreateObject(k.s, mt, 5, &mac))) {
		OK(f->C_Finalize(NULL));
		end();
		return;
	}
	/* Input a, then b: b is msg (sixteen bytes of it for ECB), or for
	 * the decryption ct, msg's ciphertext; a's ciphertext is made here. */
	static CK_BYTE a[32] = "the first input, 32 bytes long..";
	CK_BYTE ct_a[64];
	CK_ULONG ct_a_len = sizeof ct_a;
	OK(in_init(&k, mac, I_CBC));
	OK(in_call(&k, I_CBC, a, 20, ct_a, &ct_a_len));

	for (int fam = 0; fam < I_COUNT; fam++) {
		CK_BYTE_PTR in_a = fam == I_DECRYPT ? ct_a : a, in_b = fam == I_DECRYPT ? ct : msg;
		CK_ULONG na = fam == I_DECRYPT ? ct_a_len : fam == I_ECB ? 32 : 20;
		CK_ULONG nb = fam == I_DECRYPT ? ct_len : fam == I_ECB ? 16 : sizeof msg;
		/* What b gives alone: one call with a buffer. */
		CK_BYTE want[256], out[256];
		CK_ULONG want_len = sizeof want, len;
		if (!OK(in_init(&k, mac, fam)) || !OK(in_call(&k, fam, in_b, nb, want, &want_len)))
			continue;
		for (int between = 0; between < 3; between++) {
			/* a's length query; then nothing, b's length query, or b
			 * with a short buffer; then b with a buffer. */
			OK(in_init(&k, mac, fam));
			len = 0;
			OK(in_call(&k, fam, in_a, na, NULL, &len));
			if (between == 1) {
				len = 0;
				OK(in_call(&k, fam, in_b, nb, NULL, &len));
				CHECK(len >= want_len, "%s: b's length %lu < %lu", ifam_name[fam], (unsigned long)len,
				      (unsigned long)want_len);
			} else if (between == 2) {
				len = 1;
				EXPECT(in_call(&k, fam, in_b, nb, out, &len), CKR_BUFFER_TOO_SMALL);
			}
			len = sizeof out;
			if (OK(in_call(&k, fam, in_b, nb, out, &len)))
				CHECK(len == want_len && memcmp(out, want, want_len) == 0,
				      "%s, a's length query then b (%d): not b's output (%lu bytes, want %lu)", ifam_name[fam],
				      between, (unsigned long)len, (unsigned long)want_len);
			len = sizeof out;
			EXPECT(in_call(&k, fam, in_b, nb, out, &len), CKR_OPERATION_NOT_INITIALIZED);
		}
		/* The same input twice: the held result. */
		OK(in_init(&k, mac, fam));
		len = 0;
		OK(in_call(&k, fam, in_b, nb, NULL, &len));
		len = sizeof out;
		if (OK(in_call(&k, fam, in_b, nb, out, &len)))
			CHECK(len == want_len && memcmp(out, want, want_len) == 0, "%s, b twice: not b's output", ifam_name[fam]);
	}
	OK(f->C_Finalize(NULL));
	end();
}

/* ---- rules ---- */

static CK_RV sign_query(const keys *k, CK_ULONG *len)
{
	CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
	CK_RV rv = f->C_SignInit(k->s, &m, k->ec_priv);
	if (rv != CKR_OK)
		return rv;
	*len = 0;
	return f->C_Sign(k->s, msg, 32, NULL, len);
}

/* verifies_over checks an ECDSA signature of 32 bytes of data. */
int verifies_over(const keys *k, const CK_BYTE *data, const CK_BYTE *sig, CK_ULONG n)
{
	CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
	return f->C_VerifyInit(k->s, &m, k->ec_pub) == CKR_OK &&
	       f->C_Verify(k->s, (CK_BYTE_PTR)data, 32, (CK_BYTE_PTR)sig, n) == CKR_OK;
}

static int verifies(const keys *k, const CK_BYTE *sig, CK_ULONG n) { return verifies_over(k, msg, sig, n); }

static void test_rules(void)
{
	begin("rules");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	OK(f->C_Initialize(&ia));
	keys k;
	if (!open_keys(&k)) {
		OK(f->C_Finalize(NULL));
		end();
		return;
	}
	CK_MECHANISM ecdsa = {CKM_ECDSA, NULL, 0};
	CK_MECHANISM ecdsa_sha = {CKM_ECDSA_SHA256, NULL, 0};
	CK_BYTE sig[128], sig2[128];
	CK_ULONG len;

	/* Twice, so the second round runs with its Init deferred. */
	for (int round = 0; round < 2; round++) {
		OK(sign_query(&k, &len));
		CHECK(len == 64, "size query: %lu", len);
		EXPECT(f->C_SignInit(k.s, &ecdsa, k.ec_priv), CKR_OPERATION_ACTIVE);
		len = 10;
		EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_BUFFER_TOO_SMALL);
		CHECK(len == 64, "short buffer: %lu", len);
		len = 0;
		OK(f->C_Sign(k.s, msg, 32, NULL, &len));
		len = sizeof sig;
		OK(f->C_Sign(k.s, msg, 32, sig, &len));
		CHECK(len == 64 && verifies(&k, sig, len), "the held signature verifies");
		len = sizeof sig;
		EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	}
	/* A follow-up with other data gets a signature of its own data, not
	 * the held one (ECDSA: random, so only which data verifies tells). */
	OK(sign_query(&k, &len));
	len = sizeof sig;
	OK(f->C_Sign(k.s, msg + 32, 32, sig, &len));
	CHECK(verifies_over(&k, msg + 32, sig, len) && !verifies(&k, sig, len),
	      "the follow-up gets a signature of its own data");

	/* Discarded: C_SessionCancel, an Init with no mechanism. */
	OK(sign_query(&k, &len));
	OK(f3->C_SessionCancel(k.s, CKF_SIGN));
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	OK(sign_query(&k, &len));
	OK(f->C_SignInit(k.s, NULL, 0));
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);

	/* Errors end it: the daemon's (mixing the forms: the single-part
	 * call after an Update, which may follow a measured single-part call,
	 * since the query took nothing in), the module's (a NULL length
	 * pointer). */
	OK(f->C_SignInit(k.s, &ecdsa_sha, k.ec_priv));
	len = 0;
	OK(f->C_Sign(k.s, msg, sizeof msg, NULL, &len));
	OK(f->C_SignUpdate(k.s, msg, sizeof msg));
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, sizeof msg, sig, &len), CKR_OPERATION_ACTIVE);
	EXPECT(f->C_Sign(k.s, msg, sizeof msg, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	OK(sign_query(&k, &len));
	EXPECT(f->C_Sign(k.s, msg, 32, sig, NULL), CKR_ARGUMENTS_BAD);
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	/* ... and a Final after a measured single-part call. */
	OK(f->C_SignInit(k.s, &ecdsa_sha, k.ec_priv));
	len = 0;
	OK(f->C_Sign(k.s, msg, sizeof msg, NULL, &len));
	len = sizeof sig;
	EXPECT(f->C_SignFinal(k.s, sig, &len), CKR_OPERATION_ACTIVE);
	EXPECT(f->C_Sign(k.s, msg, sizeof msg, sig, &len), CKR_OPERATION_NOT_INITIALIZED);

	/* Other kinds of operation go on beside a held result. */
	OK(sign_query(&k, &len));
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
	CK_BYTE dg[32];
	CK_ULONG dl = sizeof dg;
	OK(f->C_DigestInit(k.s, &sha));
	OK(f->C_Digest(k.s, msg, sizeof msg, dg, &dl));
	len = sizeof sig;
	OK(f->C_Sign(k.s, msg, 32, sig, &len));
	CHECK(verifies(&k, sig, len), "signature after a digest in between");

	/* A mutating call sends a deferred Init after the cancel it owes. */
	CK_SESSION_HANDLE other;
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &other));
	CK_OBJECT_HANDLE spare;
	OK(gen_aes(other, CK_FALSE, &spare));
	for (int i = 0; i < 2; i++) {
		OK(sign_query(&k, &len));
		len = sizeof sig;
		OK(f->C_Sign(k.s, msg, 32, sig, &len));
	}
	OK(f->C_SignInit(k.s, &ecdsa, k.ec_priv)); /* deferred */
	OK(f->C_DestroyObject(other, spare));      /* flushes it */
	len = 0;
	OK(f->C_Sign(k.s, msg, 32, NULL, &len));
	len = sizeof sig;
	OK(f->C_Sign(k.s, msg, 32, sig, &len));
	CHECK(verifies(&k, sig, len), "signature after a flushed Init");

	/* C_WrapKey: the follow-up with other arguments is another call. */
	CK_MECHANISM kwp = {CKM_AES_KEY_WRAP_KWP, NULL, 0};
	CK_ULONG wl = 0, wl2;
	CK_OBJECT_HANDLE kept;
	OK(gen_aes(k.s, CK_FALSE, &kept));
	OK(f->C_WrapKey(k.s, &kwp, k.kek, k.target, NULL, &wl));
	wl2 = sizeof sig2;
	EXPECT(f->C_WrapKey(k.s, &kwp, k.kek, kept, sig2, &wl2), CKR_KEY_UNEXTRACTABLE);
	wl = sizeof sig;
	OK(f->C_WrapKey(k.s, &kwp, k.kek, k.target, sig, &wl));
	CHECK(wl == 40, "wrapped length %lu", wl);
	/* A key destroyed between the query and the follow-up. */
	CK_OBJECT_HANDLE gone;
	OK(gen_aes(k.s, CK_TRUE, &gone));
	wl = 0;
	OK(f->C_WrapKey(k.s, &kwp, k.kek, gone, NULL, &wl));
	OK(f->C_DestroyObject(k.s, gone));
	wl = sizeof sig;
	EXPECT(f->C_WrapKey(k.s, &kwp, k.kek, gone, sig, &wl), CKR_KEY_HANDLE_INVALID);

	/* A forked child sees nothing; the parent still collects. */
	OK(sign_query(&k, &len));
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		CK_ULONG l = sizeof sig;
		int bad = f->C_Sign(k.s, msg, 32, sig, &l) != CKR_CRYPTOKI_NOT_INITIALIZED;
		_exit(bad);
	}
	int status = 0;
	waitpid(pid, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %d", status);
	len = sizeof sig;
	OK(f->C_Sign(k.s, msg, 32, sig, &len));
	CHECK(verifies(&k, sig, len), "the parent collects after a fork");

	/* C_Logout ends the operations on private keys: the held result goes. */
	OK(sign_query(&k, &len));
	OK(f->C_Logout(k.s));
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	OK(f->C_Login(k.s, CKU_USER, PIN(user_pin)));

	/* C_CloseSession discards it. */
	keys k2;
	if (open_keys(&k2)) {
		OK(sign_query(&k2, &len));
		OK(f->C_CloseSession(k2.s));
		len = sizeof sig;
		EXPECT(f->C_Sign(k2.s, msg, 32, sig, &len), CKR_SESSION_HANDLE_INVALID);
	}
	/* C_Finalize discards it. (The private session key went with the
	 * logout above: a new one.) */
	OK(gen_ec(k.s, &k.ec_pub, &k.ec_priv));
	OK(sign_query(&k, &len));
	OK(f->C_Finalize(NULL));
	OK(f->C_Initialize(&ia));
	len = sizeof sig;
	EXPECT(f->C_Sign(k.s, msg, 32, sig, &len), CKR_SESSION_HANDLE_INVALID);
	OK(f->C_Finalize(NULL));
	end();
}

/* ---- threads ---- */

#define THREADS 6
#define ROUNDS 300

static keys shared;
static pthread_mutex_t turn = PTHREAD_MUTEX_INITIALIZER;
static int phase; /* 0: a query is due, 1: its follow-up */
static long bad_threads;

static void *own_session(void *arg)
{
	(void)arg;
	keys k;
	if (!open_keys(&k))
		return NULL;
	for (int i = 0; i < ROUNDS; i++) {
		CK_RV rv = run_op(&k, (enum family)(i % F_COUNT == F_DECRYPT ? F_ENCRYPT : i % F_COUNT), 1);
		if (rv != CKR_OK) {
			failf(__FILE__, __LINE__, "own session, round %d: rv 0x%lx", i, (unsigned long)rv);
			return NULL;
		}
	}
	pass();
	OK(f->C_CloseSession(k.s));
	return NULL;
}

/* taking_turns: the threads take turns on one session, the query on one
 * thread and the follow-up on whichever thread comes next. */
static void *taking_turns(void *arg)
{
	(void)arg;
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
	for (int i = 0; i < ROUNDS; i++) {
		pthread_mutex_lock(&turn);
		CK_BYTE d[32];
		CK_ULONG len = 0;
		CK_RV rv;
		if (phase == 0) {
			rv = f->C_DigestInit(shared.s, &sha);
			if (rv == CKR_OK)
				rv = f->C_Digest(shared.s, msg, sizeof msg, NULL, &len);
			if (rv == CKR_OK && len != 32)
				rv = CKR_GENERAL_ERROR;
		} else {
			len = sizeof d;
			rv = f->C_Digest(shared.s, msg, sizeof msg, d, &len);
			if (rv == CKR_OK && len != 32)
				rv = CKR_GENERAL_ERROR;
		}
		phase = !phase;
		pthread_mutex_unlock(&turn);
		if (rv != CKR_OK) {
			failf(__FILE__, __LINE__, "taking turns, round %d: rv 0x%lx", i, (unsigned long)rv);
			__atomic_add_fetch(&bad_threads, 1, __ATOMIC_SEQ_CST);
			return NULL;
		}
	}
	pass();
	return NULL;
}

static void test_threads(void)
{
	begin("threads");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	OK(f->C_Initialize(&ia));
	if (!open_keys(&shared)) {
		OK(f->C_Finalize(NULL));
		end();
		return;
	}
	pthread_t t[2 * THREADS];
	for (int i = 0; i < THREADS; i++) {
		pthread_create(&t[i], NULL, own_session, NULL);
		pthread_create(&t[THREADS + i], NULL, taking_turns, NULL);
	}
	for (int i = 0; i < 2 * THREADS; i++)
		pthread_join(t[i], NULL);
	/* The shared session ends with a query due: nothing is left held. */
	CK_BYTE d[32];
	CK_ULONG len = sizeof d;
	CHECK(phase == 0, "phase %d", phase);
	EXPECT(f->C_Digest(shared.s, msg, sizeof msg, d, &len), CKR_OPERATION_NOT_INITIALIZED);
	OK(f->C_Finalize(NULL));
	end();
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODULE.so\n", argv[0]);
		return 2;
	}
	ctest_start();
	alarm(CTEST_ALARM);
	snprintf(stats_path, sizeof stats_path, "%s/hsmemu-held-stats-%d", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
		 (int)getpid());
	setenv("HSMEMU_MODULE_STATS", stats_path, 1);

	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	CK_C_GetFunctionList gfl = lib ? (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList") : NULL;
	if (gfl == NULL || gfl(&f) != CKR_OK) {
		fprintf(stderr, "%s: cannot load: %s\n", argv[1], dlerror());
		return 2;
	}
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_VERSION v3 = {3, 0};
	CK_INTERFACE_PTR ifc = NULL;
	if (gi == NULL || gi((CK_UTF8CHAR_PTR) "PKCS 11", &v3, &ifc, 0) != CKR_OK || ifc == NULL) {
		fprintf(stderr, "%s: no PKCS 11 3.0 interface\n", argv[1]);
		return 2;
	}
	f3 = ifc->pFunctionList;
	CK_VERSION v32 = {3, 2};
	if (gi((CK_UTF8CHAR_PTR) "PKCS 11", &v32, &ifc, 0) != CKR_OK || ifc == NULL) {
		fprintf(stderr, "%s: no PKCS 11 3.2 interface\n", argv[1]);
		return 2;
	}
	f32 = ifc->pFunctionList;

	begin("setup");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	OK(f->C_Initialize(&ia));
	int made = make_token();
	/* A ciphertext for the decryptions (fixed_aes). */
	keys k;
	if (made && open_keys(&k)) {
		CK_MECHANISM cbc = {CKM_AES_CBC_PAD, iv, sizeof iv};
		ct_len = sizeof ct;
		OK(f->C_EncryptInit(k.s, &cbc, k.aes));
		OK(f->C_Encrypt(k.s, msg, sizeof msg, ct, &ct_len));
	}
	OK(f->C_Finalize(NULL));
	end();
	if (made) {
		test_trips();
		test_input();
		test_rules();
		test_threads();
		test_fulltable();
		test_forklock();
		test_finrace();
		test_messages();
		test_wrapauth();
	}
	unlink(stats_path);
	dlclose(lib);
	return ctest_done();
}
