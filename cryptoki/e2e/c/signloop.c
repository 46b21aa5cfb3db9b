/*
 * signloop: an application that signs in a loop through the module and
 * carries on when the daemon it talks to goes away, as a service would:
 * on an error it says so once, drops its session, opens a new one (on
 * whichever daemon the module reaches), logs in, finds its key again and
 * goes on. cryptoki/e2e/cluster_failover_test.go kills a daemon under it.
 *
 * usage: signloop MODULE TOKEN-LABEL KEY-LABEL PIN SECONDS
 * Output: "KEY id=<hex> pub=<hex>" for each session set up: the key's
 * CKA_ID and the CKA_EC_POINT of the public key with that id; "SIG <hex>"
 * for the first signature of each session (r || s over the 32-byte
 * digest 01 02 03 00 ... 00), so that the driver can tell that the key
 * found after a failover is the one signed with before; "READY" after
 * the first 200 signatures; "ERROR <what> rv=0x.." once per outage, then
 * "STALE rv=0x.." for a call on the session the error left (once the
 * module has moved to another daemon, that session is not there:
 * CKR_SESSION_HANDLE_INVALID); "RECOVERED <ms>" when a signature succeeds
 * after an outage;
 * at the end "signloop: ok=N failed=F outages=O max_recover_ms=M".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR p;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void hex(const char *prefix, const CK_BYTE *b, CK_ULONG n)
{
	fputs(prefix, stdout);
	for (CK_ULONG i = 0; i < n; i++)
		printf("%02x", b[i]);
}

/* key_line prints the KEY line of the private key k: its CKA_ID, and the
 * CKA_EC_POINT of the public key with that CKA_ID. */
static CK_RV key_line(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE k)
{
	CK_BYTE id[128], point[160];
	CK_ATTRIBUTE a = {CKA_ID, id, sizeof id};
	CK_RV rv = p->C_GetAttributeValue(h, k, &a, 1);
	if (rv != CKR_OK)
		return rv;
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_ID, id, a.ulValueLen}};
	CK_OBJECT_HANDLE pub;
	CK_ULONG found = 0;
	if ((rv = p->C_FindObjectsInit(h, t, 2)) != CKR_OK)
		return rv;
	rv = p->C_FindObjects(h, &pub, 1, &found);
	p->C_FindObjectsFinal(h);
	if (rv == CKR_OK && found != 1)
		rv = CKR_KEY_HANDLE_INVALID;
	if (rv != CKR_OK)
		return rv;
	CK_ATTRIBUTE e = {CKA_EC_POINT, point, sizeof point};
	if ((rv = p->C_GetAttributeValue(h, pub, &e, 1)) != CKR_OK)
		return rv;
	hex("KEY id=", id, a.ulValueLen);
	hex(" pub=", point, e.ulValueLen);
	printf("\n");
	return CKR_OK;
}

/* session opens a session on the token labelled label, logs in and finds
 * the private key labelled key. */
static CK_RV session(const char *label, const char *key, const char *pin, CK_SESSION_HANDLE *h, CK_OBJECT_HANDLE *k)
{
	CK_SLOT_ID slots[64];
	CK_ULONG n = 64;
	CK_RV rv = p->C_GetSlotList(CK_TRUE, slots, &n);
	if (rv != CKR_OK)
		return rv;
	for (CK_ULONG i = 0; i < n; i++) {
		CK_TOKEN_INFO ti;
		if (p->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
			continue;
		size_t l = strlen(label);
		if (l > 32 || memcmp(ti.label, label, l) != 0 || (l < 32 && ti.label[l] != ' '))
			continue;
		rv = p->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, h);
		if (rv != CKR_OK)
			return rv;
		rv = p->C_Login(*h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
		if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
			return rv;
		CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
		CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)key, strlen(key)}};
		CK_ULONG found = 0;
		if ((rv = p->C_FindObjectsInit(*h, t, 2)) != CKR_OK)
			return rv;
		rv = p->C_FindObjects(*h, k, 1, &found);
		p->C_FindObjectsFinal(*h);
		if (rv == CKR_OK && found != 1)
			rv = CKR_KEY_HANDLE_INVALID;
		if (rv == CKR_OK)
			rv = key_line(*h, *k);
		return rv;
	}
	return CKR_TOKEN_NOT_PRESENT;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: signloop MODULE TOKEN-LABEL KEY-LABEL PIN SECONDS\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	void *lib = dlopen(argv[1], RTLD_NOW);
	CK_C_GetFunctionList get = lib ? (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList") : NULL;
	if (get == NULL || get(&p) != CKR_OK || p->C_Initialize(NULL) != CKR_OK) {
		fprintf(stderr, "signloop: cannot load %s\n", argv[1]);
		return 1;
	}
	double end = now_ms() + atof(argv[5]) * 1e3, down = 0, max_recover = 0;
	long ok = 0, failed = 0, outages = 0;
	int ready = 0, fresh = 0;
	CK_SESSION_HANDLE h = 0;
	CK_OBJECT_HANDLE k = 0;
	CK_BYTE digest[32] = {1, 2, 3}, sig[128];
	CK_ULONG len = 0;
	while (now_ms() < end) {
		CK_RV rv = CKR_OK;
		const char *what = "sign";
		if (h == 0) {
			what = "session";
			rv = session(argv[2], argv[3], argv[4], &h, &k);
			fresh = 1;
		}
		if (rv == CKR_OK) {
			CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
			len = sizeof sig;
			what = "sign";
			rv = p->C_SignInit(h, &m, k);
			if (rv == CKR_OK)
				rv = p->C_Sign(h, digest, sizeof digest, sig, &len);
		}
		if (rv == CKR_OK) {
			ok++;
			if (down != 0) {
				double r = now_ms() - down;
				printf("RECOVERED %.1f\n", r);
				if (r > max_recover)
					max_recover = r;
				down = 0;
			}
			if (fresh) {
				hex("SIG ", sig, len);
				printf("\n");
				fresh = 0;
			}
			if (ok == 200 && !ready) {
				ready = 1;
				printf("READY\n");
			}
			continue;
		}
		/* A signature lost, or a session that could not be set up. */
		if (what[0] == 's' && what[1] == 'i')
			failed++;
		if (down == 0) {
			down = now_ms();
			outages++;
			printf("ERROR %s rv=0x%lx\n", what, (unsigned long)rv);
			if (h != 0) {
				CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
				printf("STALE rv=0x%lx\n", (unsigned long)p->C_SignInit(h, &m, k));
			}
		}
		if (h != 0)
			p->C_CloseSession(h);
		h = 0;
		struct timespec ts = {0, 5 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	p->C_Finalize(NULL);
	printf("signloop: ok=%ld failed=%ld outages=%ld max_recover_ms=%.1f\n", ok, failed, outages, max_recover);
	return 0;
}
