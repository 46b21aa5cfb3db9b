/*
 * heldmsg.c: held.c's sections for the message-based calls of PKCS#11 3.0
 * (docs/protocol.md, "Results ahead of the follow-up call"):
 *
 *   msgtrips  C_EncryptMessage (AES-GCM, an IV of the token's counter),
 *             C_DecryptMessage, C_SignMessage, and messages in parts
 *             (Begin, a part, the last part: encrypted, decrypted,
 *             signed), in both calling conventions: a process of three
 *             messages costs the same round trips either way, one a call
 *             that carries data.
 *   msgrules  what the parameter gets back (the token's IV, the tag) comes
 *             with the output and only with it, and decrypts; a follow-up
 *             with other input gets its own output under a new IV (the
 *             query's IV is never given a second input); a short buffer
 *             and another query keep the held result; C_MessageEncryptFinal,
 *             C_SessionCancel and C_CloseSession discard it; a new Init is
 *             CKR_OPERATION_ACTIVE and the follow-up still gets its result;
 *             a message in parts, the same for each part, and other
 *             input at a part's follow-up is CKR_ARGUMENTS_BAD, as after
 *             any part's size query.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "held.h"

#ifndef CKM_AES_GCM
#define CKM_AES_GCM 0x00001087UL
#endif

static CK_BYTE aad[] = "associated data";
/* The IV buffer an encryption passes: its first 32 bits are the fixed part
 * of the token's counter IVs. */
static const CK_BYTE fixed_iv[12] = {0xCA, 0xFE, 0xF0, 0x0D};
#define MSGS 3 /* messages a process */

/* gcm_out is an encryption's parameter: the token makes the IV. */
static void gcm_out(CK_GCM_MESSAGE_PARAMS *p, CK_BYTE iv[12], CK_BYTE tag[16])
{
	memcpy(iv, fixed_iv, 12);
	memset(tag, 0, 16);
	*p = (CK_GCM_MESSAGE_PARAMS){iv, 12, 32, CKG_GENERATE_COUNTER, tag, 128};
}

/* gcm_in is a decryption's: the IV and the tag are the caller's. */
static void gcm_in(CK_GCM_MESSAGE_PARAMS *p, CK_BYTE *iv, CK_BYTE *tag)
{
	*p = (CK_GCM_MESSAGE_PARAMS){iv, 12, 0, CKG_NO_GENERATE, tag, 128};
}

static CK_RV enc(const keys *k, const CK_BYTE *in, CK_ULONG n, CK_GCM_MESSAGE_PARAMS *p, CK_BYTE_PTR out,
		 CK_ULONG_PTR len)
{
	return f3->C_EncryptMessage(k->s, p, sizeof *p, aad, sizeof aad - 1, (CK_BYTE_PTR)in, n, out, len);
}

static CK_RV dec(const keys *k, const CK_BYTE *in, CK_ULONG n, CK_GCM_MESSAGE_PARAMS *p, CK_BYTE_PTR out,
		 CK_ULONG_PTR len)
{
	return f3->C_DecryptMessage(k->s, p, sizeof *p, aad, sizeof aad - 1, (CK_BYTE_PTR)in, n, out, len);
}

/* counter is a token IV's counter, after its fixed part. */
static uint64_t counter(const CK_BYTE iv[12])
{
	uint64_t c = 0;
	for (int i = 4; i < 12; i++)
		c = c << 8 | iv[i];
	return c;
}

static int untouched(const CK_BYTE iv[12], const CK_BYTE tag[16])
{
	static const CK_BYTE zero[16];
	return memcmp(iv, fixed_iv, 12) == 0 && memcmp(tag, zero, 16) == 0;
}

/* A message to decrypt: msg, its IV and its tag (setup). */
static CK_BYTE d_iv[12], d_tag[16], d_ct[sizeof msg];

/* opens decrypts ct under iv and tag in a process of its own, and
 * compares with want. */
static int opens(const keys *k, CK_BYTE *iv, CK_BYTE *tag, const CK_BYTE *ct, CK_ULONG n, const CK_BYTE *want,
		 CK_ULONG want_len)
{
	CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE out[256];
	CK_ULONG len = sizeof out;
	gcm_in(&p, iv, tag);
	if (f3->C_MessageDecryptInit(k->s, &gcm, k->aes) != CKR_OK)
		return 0;
	CK_RV rv = dec(k, ct, n, &p, out, &len);
	return f3->C_MessageDecryptFinal(k->s) == CKR_OK && rv == CKR_OK && len == want_len &&
	       memcmp(out, want, want_len) == 0;
}

/* ---- msgtrips ---- */

enum mfam { M_ENCRYPT, M_DECRYPT, M_SIGN, M_SIGN_PARTS, M_ENCRYPT_PARTS, M_DECRYPT_PARTS, M_COUNT };
static const char *mfam_name[M_COUNT] = {"encrypt-message", "decrypt-message",       "sign-message",
					 "sign-message-parts", "encrypt-message-parts", "decrypt-message-parts"};
/* Round trips a process costs: its Init and Final, and each call that
 * carries data (a message in parts: Begin, a part, the last). */
static const int mfam_trips[M_COUNT] = {MSGS + 2, MSGS + 2, MSGS + 2, 3 * MSGS + 2, 3 * MSGS + 2, 3 * MSGS + 2};

/* next is C_EncryptMessageNext or C_DecryptMessageNext, asking the
 * output's length first with twocall; *got adds what came out. */
static CK_RV next(const keys *k, int decrypt, CK_GCM_MESSAGE_PARAMS *p, const CK_BYTE *in, CK_ULONG n, CK_BYTE_PTR out,
		  CK_ULONG cap, CK_ULONG *got, CK_FLAGS flags, int twocall)
{
	CK_RV (*fn)(CK_SESSION_HANDLE, CK_VOID_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR, CK_FLAGS) =
		decrypt ? f3->C_DecryptMessageNext : f3->C_EncryptMessageNext;
	CK_ULONG len = 0;
	CK_RV rv = CKR_OK;
	if (twocall)
		rv = fn(k->s, p, sizeof *p, (CK_BYTE_PTR)in, n, NULL, &len, flags);
	if (rv != CKR_OK)
		return rv;
	len = cap;
	if ((rv = fn(k->s, p, sizeof *p, (CK_BYTE_PTR)in, n, out, &len, flags)) == CKR_OK)
		*got += len;
	return rv;
}

/* aead_parts encrypts msg (or decrypts d_ct) in two parts; iv and tag
 * get what the encryption writes back. */
static CK_RV aead_parts(const keys *k, int decrypt, int twocall, CK_BYTE iv[12], CK_BYTE tag[16], CK_BYTE_PTR out,
			CK_ULONG cap, CK_ULONG *got)
{
	CK_GCM_MESSAGE_PARAMS p;
	const CK_BYTE *in = decrypt ? d_ct : msg;
	CK_RV rv;
	*got = 0;
	if (decrypt) {
		gcm_in(&p, d_iv, d_tag);
		rv = f3->C_DecryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1);
	} else {
		gcm_out(&p, iv, tag);
		rv = f3->C_EncryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1);
	}
	if (rv == CKR_OK)
		rv = next(k, decrypt, &p, in, 50, out, cap, got, 0, twocall);
	if (rv == CKR_OK)
		rv = next(k, decrypt, &p, in + 50, sizeof msg - 50, out + *got, cap - *got, got, CKF_END_OF_MESSAGE, twocall);
	return rv;
}

/* sign_parts signs msg in two parts, asking the last part's length
 * first with twocall. */
static CK_RV sign_parts(const keys *k, int twocall, CK_BYTE_PTR sig, CK_ULONG_PTR len)
{
	CK_RV rv = f3->C_SignMessageBegin(k->s, NULL, 0);
	if (rv == CKR_OK)
		rv = f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, NULL, NULL);
	if (rv == CKR_OK && twocall) {
		CK_ULONG n = 0;
		rv = f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, NULL, &n);
	}
	if (rv == CKR_OK)
		rv = f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, sig, len);
	return rv;
}

/* msg_op: a process of MSGS messages, from its Init to its Final. */
static CK_RV msg_op(const keys *k, int fam, int twocall)
{
	CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0};
	CK_MECHANISM ecdsa_sha = {CKM_ECDSA_SHA256, NULL, 0};
	CK_RV rv = fam == M_ENCRYPT || fam == M_ENCRYPT_PARTS   ? f3->C_MessageEncryptInit(k->s, &gcm, k->aes)
		   : fam == M_DECRYPT || fam == M_DECRYPT_PARTS ? f3->C_MessageDecryptInit(k->s, &gcm, k->aes)
		   : fam == M_SIGN				? f3->C_MessageSignInit(k->s, &ecdsa, k->ec_priv)
								: f3->C_MessageSignInit(k->s, &ecdsa_sha, k->ec_priv);
	if (rv != CKR_OK)
		return rv;
	if (fam == M_ENCRYPT_PARTS || fam == M_DECRYPT_PARTS) {
		int decrypt = fam == M_DECRYPT_PARTS;
		for (int i = 0; i < MSGS; i++) {
			CK_BYTE iv[12], tag[16], out[256];
			CK_ULONG got;
			if ((rv = aead_parts(k, decrypt, twocall, iv, tag, out, sizeof out, &got)) != CKR_OK)
				return rv;
			if (got != sizeof msg || (decrypt && memcmp(out, msg, sizeof msg) != 0) || (!decrypt && untouched(iv, tag)))
				return CKR_GENERAL_ERROR;
		}
		return decrypt ? f3->C_MessageDecryptFinal(k->s) : f3->C_MessageEncryptFinal(k->s);
	}
	if (fam == M_SIGN_PARTS) {
		for (int i = 0; i < MSGS; i++) {
			CK_BYTE sig[128];
			CK_ULONG len = sizeof sig;
			if ((rv = sign_parts(k, twocall, sig, &len)) != CKR_OK)
				return rv;
			if (len != 64)
				return CKR_GENERAL_ERROR;
		}
		return f3->C_MessageSignFinal(k->s);
	}
	uint64_t last = 0;
	for (int i = 0; i < MSGS; i++) {
		CK_GCM_MESSAGE_PARAMS p;
		CK_BYTE iv[12], tag[16], out[256];
		CK_ULONG len = 0;
		if (fam == M_ENCRYPT)
			gcm_out(&p, iv, tag);
		else
			gcm_in(&p, d_iv, d_tag);
		for (int step = twocall ? 0 : 1; step < 2; step++) {
			CK_BYTE_PTR o = step == 0 ? NULL : out;
			len = step == 0 ? 0 : sizeof out;
			rv = fam == M_ENCRYPT	? enc(k, msg, sizeof msg, &p, o, &len)
			     : fam == M_DECRYPT ? dec(k, d_ct, sizeof d_ct, &p, o, &len)
						: f3->C_SignMessage(k->s, NULL, 0, msg, 32, o, &len);
			if (rv != CKR_OK)
				return rv;
			/* A length query writes nothing back. */
			if (step == 0 && fam == M_ENCRYPT && !untouched(iv, tag))
				return CKR_GENERAL_ERROR;
		}
		switch (fam) {
		case M_ENCRYPT:
			/* Each message its own IV, the next of the counter. */
			if (len != sizeof msg || untouched(iv, tag) || (i > 0 && counter(iv) != last + 1))
				return CKR_GENERAL_ERROR;
			last = counter(iv);
			break;
		case M_DECRYPT:
			if (len != sizeof msg || memcmp(out, msg, sizeof msg) != 0)
				return CKR_GENERAL_ERROR;
			break;
		default:
			if (len != 64)
				return CKR_GENERAL_ERROR;
		}
	}
	return fam == M_ENCRYPT	  ? f3->C_MessageEncryptFinal(k->s)
	       : fam == M_DECRYPT ? f3->C_MessageDecryptFinal(k->s)
				  : f3->C_MessageSignFinal(k->s);
}

static void test_msgtrips(void)
{
	begin("msgtrips");
	for (int fam = 0; fam < M_COUNT; fam++) {
		unsigned long per[2] = {0, 0};
		for (int twocall = 0; twocall < 2; twocall++) {
			unsigned long c1, t1, c2, t2;
			/* The difference is what ten processes more cost: the
			 * Init, the messages and the Final, each one round trip
			 * (message Inits are never deferred). */
			if (!measure_op(msg_op, fam, twocall, 2, &c1, &t1) || !measure_op(msg_op, fam, twocall, 12, &c2, &t2))
				continue;
			unsigned long trips = t2 - t1, calls = c2 - c1;
			per[twocall] = trips;
			printf("trips: %-15s %-8s %4.1f calls, %4.1f round trips a process of %d messages\n", mfam_name[fam],
			       twocall ? "two-call" : "one-call", calls / 10.0, trips / 10.0, MSGS);
			CHECK(trips == 10ul * (unsigned long)mfam_trips[fam], "%s %s: %lu round trips for 10 processes, want %d",
			      mfam_name[fam], twocall ? "two-call" : "one-call", trips, 10 * mfam_trips[fam]);
		}
		CHECK(per[0] == per[1], "%s: one call %lu round trips, length query first %lu", mfam_name[fam], per[0],
		      per[1]);
	}
	end();
}

/* ---- msgrules ---- */

/* query asks for an encryption's length. */
static CK_RV query(const keys *k, const CK_BYTE *in, CK_ULONG n, CK_GCM_MESSAGE_PARAMS *p, CK_ULONG *len)
{
	*len = 0;
	return enc(k, in, n, p, NULL, len);
}

static void encrypt_rules(const keys *k)
{
	CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE iv[12], tag[16], ct[256];
	CK_ULONG len;
	static const CK_BYTE other[20] = "another input, 20 b";

	if (!OK(f3->C_MessageEncryptInit(k->s, &gcm, k->aes)))
		return;
	/* One call: the counter now. */
	gcm_out(&p, iv, tag);
	len = sizeof ct;
	OK(enc(k, msg, sizeof msg, &p, ct, &len));
	uint64_t c = counter(iv);

	/* The same input: the query's message, its IV and tag written back
	 * with the ciphertext, which they decrypt. */
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	CHECK(len == sizeof msg && untouched(iv, tag), "length query: %lu, or something written back", len);
	len = sizeof ct;
	OK(enc(k, msg, sizeof msg, &p, ct, &len));
	CHECK(counter(iv) == c + 1, "same input: counter %llu after %llu", (unsigned long long)counter(iv),
	      (unsigned long long)c);
	CHECK(opens(k, iv, tag, ct, len, msg, sizeof msg), "same input: the held message does not decrypt");
	c = counter(iv);

	/* Other input: its own message, under the IV after the query's. */
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	len = sizeof ct;
	OK(enc(k, other, sizeof other, &p, ct, &len));
	CHECK(len == sizeof other && counter(iv) == c + 2, "other input: %lu bytes, counter %llu after %llu", len,
	      (unsigned long long)counter(iv), (unsigned long long)c);
	CHECK(opens(k, iv, tag, ct, len, other, sizeof other), "other input: does not decrypt to it");
	c = counter(iv);

	/* A short buffer and another query keep it; nothing written back. */
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	len = 10;
	EXPECT(enc(k, msg, sizeof msg, &p, ct, &len), CKR_BUFFER_TOO_SMALL);
	CHECK(len == sizeof msg && untouched(iv, tag), "short buffer: %lu, or something written back", len);
	OK(query(k, msg, sizeof msg, &p, &len));
	CHECK(len == sizeof msg && untouched(iv, tag), "query again: %lu, or something written back", len);
	len = sizeof ct;
	OK(enc(k, msg, sizeof msg, &p, ct, &len));
	CHECK(counter(iv) == c + 1 && opens(k, iv, tag, ct, len, msg, sizeof msg), "after a short buffer: counter %llu",
	      (unsigned long long)counter(iv));
	c = counter(iv);

	/* A new Init is CKR_OPERATION_ACTIVE; the follow-up still gets the
	 * query's message (the daemon's copy). */
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	EXPECT(f3->C_MessageEncryptInit(k->s, &gcm, k->aes), CKR_OPERATION_ACTIVE);
	len = sizeof ct;
	OK(enc(k, msg, sizeof msg, &p, ct, &len));
	CHECK(counter(iv) == c + 1 && opens(k, iv, tag, ct, len, msg, sizeof msg), "after an Init: counter %llu",
	      (unsigned long long)counter(iv));
	c = counter(iv);

	/* C_MessageEncryptFinal while a message is in progress ends the
	 * message (CKR_OPERATION_ACTIVE), as without a held result: the
	 * follow-up is a new message, under a new IV. */
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	EXPECT(f3->C_MessageEncryptFinal(k->s), CKR_OPERATION_ACTIVE);
	len = sizeof ct;
	OK(enc(k, msg, sizeof msg, &p, ct, &len));
	CHECK(counter(iv) == c + 2 && opens(k, iv, tag, ct, len, msg, sizeof msg), "after a Final: counter %llu after %llu",
	      (unsigned long long)counter(iv), (unsigned long long)c);
	OK(f3->C_MessageEncryptFinal(k->s));

	/* C_SessionCancel discards it with the process. */
	OK(f3->C_MessageEncryptInit(k->s, &gcm, k->aes));
	gcm_out(&p, iv, tag);
	OK(query(k, msg, sizeof msg, &p, &len));
	OK(f3->C_SessionCancel(k->s, CKF_MESSAGE_ENCRYPT));
	len = sizeof ct;
	EXPECT(enc(k, msg, sizeof msg, &p, ct, &len), CKR_OPERATION_NOT_INITIALIZED);
	CHECK(untouched(iv, tag), "after C_SessionCancel: something written back");
}

/* enext is C_EncryptMessageNext with the parameter p. */
static CK_RV enext(const keys *k, CK_GCM_MESSAGE_PARAMS *p, const CK_BYTE *in, CK_ULONG n, CK_BYTE_PTR out,
		   CK_ULONG_PTR len, CK_FLAGS flags)
{
	return f3->C_EncryptMessageNext(k->s, p, sizeof *p, (CK_BYTE_PTR)in, n, out, len, flags);
}

static void parts_rules(const keys *k)
{
	CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE iv[12], tag[16], ct[256];
	static const CK_BYTE zero[16];
	CK_ULONG len, got;
	const CK_FLAGS last = CKF_END_OF_MESSAGE;

	if (!OK(f3->C_MessageEncryptInit(k->s, &gcm, k->aes)))
		return;
	/* Both parts held: the message decrypts. */
	if (OK(aead_parts(k, 0, 1, iv, tag, ct, sizeof ct, &got)))
		CHECK(got == sizeof msg && opens(k, iv, tag, ct, got, msg, sizeof msg), "in parts: does not decrypt");

	/* A short buffer at the last part keeps it, and writes no tag. */
	gcm_out(&p, iv, tag);
	OK(f3->C_EncryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1));
	len = 0;
	OK(enext(k, &p, msg, 50, NULL, &len, 0));
	len = sizeof ct;
	OK(enext(k, &p, msg, 50, ct, &len, 0));
	CHECK(len == 0, "a part's output: %lu bytes", len);
	len = 0;
	OK(enext(k, &p, msg + 50, 50, NULL, &len, last));
	CHECK(len == sizeof msg, "the last part's length %lu", len);
	len = 10;
	EXPECT(enext(k, &p, msg + 50, 50, ct, &len, last), CKR_BUFFER_TOO_SMALL);
	CHECK(len == sizeof msg && memcmp(tag, zero, 16) == 0, "short buffer: %lu, or a tag written", len);
	len = sizeof ct;
	OK(enext(k, &p, msg + 50, 50, ct, &len, last));
	CHECK(opens(k, iv, tag, ct, len, msg, sizeof msg), "after a short buffer: does not decrypt");

	/* Other input at a part's follow-up, or at the last part's: refused,
	 * and the message ends. */
	gcm_out(&p, iv, tag);
	OK(f3->C_EncryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1));
	len = 0;
	OK(enext(k, &p, msg, 50, NULL, &len, 0));
	len = sizeof ct;
	EXPECT(enext(k, &p, msg + 50, 50, ct, &len, 0), CKR_ARGUMENTS_BAD);
	EXPECT(enext(k, &p, msg, 50, ct, &len, 0), CKR_OPERATION_NOT_INITIALIZED);
	gcm_out(&p, iv, tag);
	OK(f3->C_EncryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1));
	len = sizeof ct;
	OK(enext(k, &p, msg, 50, ct, &len, 0));
	len = 0;
	OK(enext(k, &p, msg + 50, 50, NULL, &len, last));
	len = sizeof ct;
	EXPECT(enext(k, &p, msg, 50, ct, &len, last), CKR_ARGUMENTS_BAD);
	CHECK(memcmp(tag, zero, 16) == 0, "other input: a tag written");
	/* A part's query, then the same input as the last part: another call
	 * (the flags are matched too), which mixes the forms. */
	gcm_out(&p, iv, tag);
	OK(f3->C_EncryptMessageBegin(k->s, &p, sizeof p, aad, sizeof aad - 1));
	len = 0;
	OK(enext(k, &p, msg, 50, NULL, &len, 0));
	len = sizeof ct;
	EXPECT(enext(k, &p, msg, 50, ct, &len, last), CKR_OPERATION_ACTIVE);
	OK(f3->C_MessageEncryptFinal(k->s));
}

static void decrypt_sign_rules(const keys *k)
{
	CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0}, ecdsa = {CKM_ECDSA, NULL, 0};
	CK_GCM_MESSAGE_PARAMS p;
	CK_BYTE iv[12], tag[16], ct[256], out[256];
	CK_ULONG len, ct_len = sizeof ct;
	static const CK_BYTE other[20] = "another input, 20 b";

	/* other's message, to decrypt after a query over d_ct. */
	OK(f3->C_MessageEncryptInit(k->s, &gcm, k->aes));
	gcm_out(&p, iv, tag);
	OK(enc(k, other, sizeof other, &p, ct, &ct_len));
	OK(f3->C_MessageEncryptFinal(k->s));

	OK(f3->C_MessageDecryptInit(k->s, &gcm, k->aes));
	CK_GCM_MESSAGE_PARAMS pd, po;
	gcm_in(&pd, d_iv, d_tag);
	gcm_in(&po, iv, tag);
	len = 0;
	OK(dec(k, d_ct, sizeof d_ct, &pd, NULL, &len));
	CHECK(len == sizeof msg, "decryption's length %lu", len);
	len = sizeof out;
	if (OK(dec(k, ct, ct_len, &po, out, &len)))
		CHECK(len == sizeof other && memcmp(out, other, sizeof other) == 0, "decryption: not the follow-up's plaintext");
	len = 0;
	OK(dec(k, d_ct, sizeof d_ct, &pd, NULL, &len));
	len = sizeof out;
	if (OK(dec(k, d_ct, sizeof d_ct, &pd, out, &len)))
		CHECK(len == sizeof msg && memcmp(out, msg, sizeof msg) == 0, "decryption: not the held plaintext");
	OK(f3->C_MessageDecryptFinal(k->s));

	/* A signature of the follow-up's own data (ECDSA: random, so only
	 * which data verifies tells). */
	CK_BYTE sig[128];
	OK(f3->C_MessageSignInit(k->s, &ecdsa, k->ec_priv));
	len = 0;
	OK(f3->C_SignMessage(k->s, NULL, 0, msg, 32, NULL, &len));
	len = sizeof sig;
	OK(f3->C_SignMessage(k->s, NULL, 0, msg + 32, 32, sig, &len));
	CHECK(verifies_over(k, msg + 32, sig, len) && !verifies_over(k, msg, sig, len),
	      "signature: not of the follow-up's data");
	len = 0;
	OK(f3->C_SignMessage(k->s, NULL, 0, msg, 32, NULL, &len));
	len = sizeof sig;
	OK(f3->C_SignMessage(k->s, NULL, 0, msg, 32, sig, &len));
	CHECK(len == 64 && verifies_over(k, msg, sig, len), "the held signature does not verify");
	OK(f3->C_MessageSignFinal(k->s));

	/* In parts: the last part's query, a short buffer, the follow-up. */
	CK_MECHANISM ecdsa_sha = {CKM_ECDSA_SHA256, NULL, 0};
	OK(f3->C_MessageSignInit(k->s, &ecdsa_sha, k->ec_priv));
	OK(f3->C_SignMessageBegin(k->s, NULL, 0));
	OK(f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, NULL, NULL));
	len = 0;
	OK(f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, NULL, &len));
	CHECK(len == 64, "last part's length %lu", len);
	len = 10;
	EXPECT(f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, sig, &len), CKR_BUFFER_TOO_SMALL);
	CHECK(len == 64, "short buffer: %lu", len);
	len = sizeof sig;
	OK(f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, sig, &len));
	CK_BYTE sig_parts[64];
	CK_ULONG parts_len = len < sizeof sig_parts ? len : sizeof sig_parts;
	memcpy(sig_parts, sig, parts_len);
	/* Other input at the last part's follow-up: refused, the message
	 * ends, the process goes on. */
	OK(f3->C_SignMessageBegin(k->s, NULL, 0));
	len = 0;
	OK(f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, NULL, &len));
	len = sizeof sig;
	EXPECT(f3->C_SignMessageNext(k->s, NULL, 0, msg + 50, 50, sig, &len), CKR_ARGUMENTS_BAD);
	EXPECT(f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	/* C_SessionCancel discards it. */
	OK(f3->C_SignMessageBegin(k->s, NULL, 0));
	len = 0;
	OK(f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, NULL, &len));
	OK(f3->C_SessionCancel(k->s, CKF_MESSAGE_SIGN));
	len = sizeof sig;
	EXPECT(f3->C_SignMessageNext(k->s, NULL, 0, msg, 50, sig, &len), CKR_OPERATION_NOT_INITIALIZED);
	/* The parts' signature verifies over the whole message. */
	CHECK(parts_len == 64 && f->C_VerifyInit(k->s, &ecdsa_sha, k->ec_pub) == CKR_OK &&
		      f->C_Verify(k->s, msg, sizeof msg, sig_parts, parts_len) == CKR_OK,
	      "the held last part's signature does not verify");
}

static void test_msgrules(void)
{
	begin("msgrules");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	OK(f->C_Initialize(&ia));
	keys k;
	if (open_keys(&k)) {
		encrypt_rules(&k);
		parts_rules(&k);
		decrypt_sign_rules(&k);
		/* C_CloseSession discards it. */
		keys k2;
		if (open_keys(&k2)) {
			CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
			CK_GCM_MESSAGE_PARAMS p;
			CK_BYTE iv[12], tag[16], ct[256];
			CK_ULONG len;
			OK(f3->C_MessageEncryptInit(k2.s, &gcm, k2.aes));
			gcm_out(&p, iv, tag);
			OK(query(&k2, msg, sizeof msg, &p, &len));
			OK(f->C_CloseSession(k2.s));
			len = sizeof ct;
			EXPECT(enc(&k2, msg, sizeof msg, &p, ct, &len), CKR_SESSION_HANDLE_INVALID);
			CHECK(untouched(iv, tag), "after C_CloseSession: something written back");
		}
	}
	OK(f->C_Finalize(NULL));
	end();
}

void test_messages(void)
{
	/* The message to decrypt. */
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	begin("msgsetup");
	OK(f->C_Initialize(&ia));
	keys k;
	int made = 0;
	if (open_keys(&k)) {
		CK_MECHANISM gcm = {CKM_AES_GCM, NULL, 0};
		CK_GCM_MESSAGE_PARAMS p;
		CK_ULONG len = sizeof d_ct;
		gcm_out(&p, d_iv, d_tag);
		made = OK(f3->C_MessageEncryptInit(k.s, &gcm, k.aes)) && OK(enc(&k, msg, sizeof msg, &p, d_ct, &len)) &&
		       OK(f3->C_MessageEncryptFinal(k.s)) && CHECK(len == sizeof d_ct, "setup: %lu bytes", len);
	}
	OK(f->C_Finalize(NULL));
	end();
	if (!made)
		return;
	test_msgtrips();
	test_msgrules();
}
