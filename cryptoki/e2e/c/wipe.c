/*
 * wipe.c: no secret that went through the module is left in the memory a
 * core dump of the application holds (docs/keychain.md, "Secrets in
 * memory").
 *
 *   e2e-wipe MODULE.so
 *
 * HSMEMU_SOCKET (or HSMEMU_SERVER) names a running `hsmemu serve`;
 * cryptoki/e2e/wipe_test.go starts one and runs this program over the
 * rings, the socket and TLS, with the normal and the ASan/UBSan module.
 *
 * The secrets are drawn at run time (getrandom) and kept only masked,
 * every byte XORed with MASK: the program holds none of them but in the
 * buffers it hands the module, which it wipes itself once the call
 * returns. They are looked for in pieces of PIECE bytes, so a part of one
 * (a frame split at a ring's end) is found too. Sections:
 *
 *   setup    the scan finds a secret the program itself holds on its heap,
 *            and nothing of the others.
 *   secrets  the SO PIN at C_InitToken and C_Login; the user PIN at
 *            C_InitPIN and C_Login, changed with C_SetPIN to a new one that
 *            logs in; an AES key's value in C_CreateObject's template
 *            (CKA_EXTRACTABLE, not CKA_SENSITIVE), read back with
 *            C_GetAttributeValue; a plaintext longer than a request
 *            buffer's first allocation, encrypted and decrypted in both
 *            calling conventions, twice each (Inits deferred, results held).
 *   scan     with the session open, logged in, its connections (and rings)
 *            there: every mapping of /proc/self/smaps that a core dump
 *            holds, that is the readable ones but those marked dd
 *            (MADV_DONTDUMP), [vvar], [vsyscall] and read-only file
 *            mappings, holds no piece of any secret. The rings, when
 *            HSMEMU_TRANSPORT=ring, are there and marked dd.
 *   final    the same after C_Finalize.
 *
 * Memory is read through /proc/self/mem, into a buffer marked dd itself:
 * a page that cannot be read is skipped, and the sanitizers see only a
 * read into the program's own buffer. Output as held.c's (ctest.h), never
 * a secret's bytes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#include "ctest.h"

#define MASK 0xA5         /* a secret's byte, as the program keeps it */
#define PIECE 16          /* secrets are looked for in pieces this long */
#define PIN_LEN 32
#define KEY_LEN 32
#define TEXT_LEN 320      /* past a request buffer's first 256 bytes: it grows */
#define CHUNK (1u << 20)  /* memory is read this much at a time */

_Static_assert(PIN_LEN % PIECE == 0 && KEY_LEN % PIECE == 0 && TEXT_LEN % PIECE == 0, "whole pieces");

/* ---- the secrets, kept masked ---- */

enum { S_SO_PIN, S_USER_PIN, S_NEW_PIN, S_KEY, S_TEXT, S_COUNT };
static const char *secret_name[S_COUNT] = {"the SO PIN", "the user PIN", "the new user PIN", "the key's value",
					   "the plaintext"};
static const size_t secret_len[S_COUNT] = {PIN_LEN, PIN_LEN, PIN_LEN, KEY_LEN, TEXT_LEN};
static uint8_t masked[S_COUNT][TEXT_LEN];
/* first[m]: some piece of a secret starts with the masked byte m. */
static uint8_t first[256];

/* make_secrets draws the secrets. Random bytes masked are random bytes:
 * they are drawn as they are kept, and no unmasked copy is ever made. A
 * PIN is 32 characters of a 32-letter alphabet. */
static int make_secrets(void)
{
	static const char alphabet[] = "0123456789abcdefghijklmnopqrstuv";
	for (int s = 0; s < S_COUNT; s++) {
		if (getrandom(masked[s], secret_len[s], 0) != (ssize_t)secret_len[s])
			return 0;
		if (s <= S_NEW_PIN)
			for (size_t i = 0; i < secret_len[s]; i++)
				masked[s][i] = (uint8_t)(alphabet[masked[s][i] & 31] ^ MASK);
	}
	for (int s = 0; s < S_COUNT; s++)
		for (size_t off = 0; off < secret_len[s]; off += PIECE)
			first[masked[s][off]] = 1;
	return 1;
}

/* reveal writes secret s into buf, which the caller wipes. */
static void reveal(int s, void *buf)
{
	uint8_t *p = buf;
	for (size_t i = 0; i < secret_len[s]; i++)
		p[i] = masked[s][i] ^ MASK;
}

/* is_secret: the n bytes at p are secret s from offset off. */
static int is_secret(int s, size_t off, const uint8_t *p, size_t n)
{
	uint8_t d = 0;
	for (size_t i = 0; i < n; i++)
		d |= (uint8_t)((p[i] ^ MASK) ^ masked[s][off + i]);
	return d == 0;
}

/* ---- the scan ---- */

static uint8_t *chunk; /* CHUNK bytes, marked dd: never scanned itself */
static int mem = -1;   /* /proc/self/mem */

/* search adds to found[s] the pieces of each secret in the n bytes at p.
 * A secret's pieces are its PIECE bytes at every multiple of PIECE (every
 * secret is a multiple of PIECE long), so any PIECE * 2 - 1 bytes of it
 * in a row hold one. */
static void search(const uint8_t *p, size_t n, long found[S_COUNT])
{
	for (size_t i = 0; i + PIECE <= n; i++) {
		uint8_t m = p[i] ^ MASK;
		if (!first[m])
			continue;
		for (int s = 0; s < S_COUNT; s++)
			for (size_t off = 0; off < secret_len[s]; off += PIECE)
				if (masked[s][off] == m && is_secret(s, off, p + i, PIECE))
					found[s]++;
	}
}

/* scan_range reads [start, end) through /proc/self/mem; a page that
 * cannot be read is skipped. Consecutive reads overlap by PIECE - 1
 * bytes, so a piece across their border is seen. */
static void scan_range(uintptr_t start, uintptr_t end, long found[S_COUNT])
{
	uintptr_t a = start;
	while (a < end) {
		size_t want = end - a < CHUNK ? end - a : CHUNK;
		ssize_t k = pread(mem, chunk, want, (off_t)a);
		if (k <= 0) {
			a = (a + 4096) & ~(uintptr_t)4095;
			continue;
		}
		search(chunk, (size_t)k, found);
		if ((size_t)k < PIECE || a + (size_t)k >= end)
			a += (size_t)k;
		else
			a += (size_t)k - (PIECE - 1);
	}
	explicit_bzero(chunk, CHUNK);
}

/* read_file reads a whole /proc file (its size says nothing) into a
 * NUL-terminated buffer the caller frees. */
static char *read_file(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 1 << 16, len = 0;
	char *b = malloc(cap);
	for (;;) {
		if (b == NULL)
			break;
		if (cap - len < 4096) {
			char *nb = realloc(b, cap * 2);
			if (nb == NULL) {
				free(b);
				b = NULL;
				break;
			}
			b = nb;
			cap *= 2;
		}
		ssize_t k = read(fd, b + len, cap - len - 1);
		if (k < 0) {
			free(b);
			b = NULL;
			break;
		}
		if (k == 0) {
			b[len] = '\0';
			break;
		}
		len += (size_t)k;
	}
	close(fd);
	return b;
}

/* has_flag: the VmFlags line lists flag. */
static int has_flag(const char *line, const char *flag)
{
	size_t n = strlen(flag);
	for (const char *p = strstr(line, flag); p != NULL; p = strstr(p + 1, flag))
		if (p[-1] == ' ' && (p[n] == ' ' || p[n] == '\0' || p[n] == '\n'))
			return 1;
	return 0;
}

typedef struct {
	long found[S_COUNT]; /* pieces of each secret in what a dump holds */
	int rings;           /* mappings of the module's rings */
	int rings_dumped;    /* of them, not marked dd */
	long scanned;        /* bytes read */
} scan_result;

/* scan reads every mapping a core dump holds and counts the pieces of the
 * secrets there; report prints where each was found. */
static int scan(scan_result *r, int report)
{
	memset(r, 0, sizeof *r);
	char *smaps = read_file("/proc/self/smaps");
	if (smaps == NULL)
		return 0;
	uintptr_t start = 0, end = 0;
	char perms[8] = "", path[512] = "";
	int have = 0;
	for (char *line = smaps, *next; line != NULL && *line != '\0'; line = next) {
		next = strchr(line, '\n');
		if (next != NULL)
			*next++ = '\0';
		unsigned long s, e, off, inode;
		char dev[32];
		int pos = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %31s %lu %n", &s, &e, perms, &off, dev, &inode, &pos) >= 6) {
			start = s;
			end = e;
			snprintf(path, sizeof path, "%s", pos > 0 ? line + pos : "");
			have = 1;
			continue;
		}
		if (!have || strncmp(line, "VmFlags:", 8) != 0)
			continue;
		have = 0;
		int dd = has_flag(line, "dd");
		if (strstr(path, "hsmemu-ring") != NULL) {
			r->rings++;
			if (!dd)
				r->rings_dumped++;
		}
		if (perms[0] != 'r' || dd || strcmp(path, "[vvar]") == 0 || strcmp(path, "[vvar_vclock]") == 0 ||
		    strcmp(path, "[vsyscall]") == 0 || (path[0] == '/' && perms[1] != 'w'))
			continue;
		long found[S_COUNT] = {0};
		scan_range(start, end, found);
		r->scanned += (long)(end - start);
		for (int i = 0; i < S_COUNT; i++) {
			if (found[i] != 0 && report)
				failf(__FILE__, __LINE__, "%s: %ld piece(s) in %lx-%lx %s %s", secret_name[i], found[i],
				      (unsigned long)start, (unsigned long)end, perms, path[0] ? path : "[anon]");
			r->found[i] += found[i];
		}
	}
	free(smaps);
	return 1;
}

/* check_clean scans and checks that no secret is there. */
static void check_clean(int want_rings)
{
	scan_result r;
	if (!CHECK(scan(&r, 1), "cannot read /proc/self/smaps"))
		return;
	printf("%s: scanned %ld KiB; %d ring mapping(s), %d in a dump\n", section, r.scanned / 1024, r.rings,
	       r.rings_dumped);
	for (int s = 0; s < S_COUNT; s++)
		CHECK(r.found[s] == 0, "%s is in memory a core dump holds (%ld pieces)", secret_name[s], r.found[s]);
	CHECK(r.rings_dumped == 0, "%d ring mapping(s) not marked dd (MADV_DONTDUMP)", r.rings_dumped);
	if (want_rings)
		CHECK(r.rings > 0, "no ring mapping with HSMEMU_TRANSPORT=ring");
}

/* ---- the module ---- */

static CK_FUNCTION_LIST *f;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

static CK_RV login(CK_SESSION_HANDLE s, CK_USER_TYPE who, int secret)
{
	CK_UTF8CHAR pin[PIN_LEN];
	reveal(secret, pin);
	CK_RV rv = f->C_Login(s, who, pin, PIN_LEN);
	explicit_bzero(pin, sizeof pin);
	return rv;
}

/* make_token: a new token in a new slot, its user PIN set and changed;
 * the session is left logged in as the user with the new PIN. */
static int make_token(CK_SESSION_HANDLE *s)
{
	CK_UTF8CHAR label[32], pin[PIN_LEN], pin2[PIN_LEN];
	ctest_label(label, "wipe");
	reveal(S_SO_PIN, pin);
	CK_RV rv = f->C_InitToken(0, pin, PIN_LEN, label);
	explicit_bzero(pin, sizeof pin);
	if (!OK(rv))
		return 0;
	CK_SLOT_ID slot = ctest_slot_of(f, label);
	if (slot == 0)
		return 0;
	if (!OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, s)) ||
	    !OK(login(*s, CKU_SO, S_SO_PIN)))
		return 0;
	reveal(S_USER_PIN, pin);
	rv = f->C_InitPIN(*s, pin, PIN_LEN);
	explicit_bzero(pin, sizeof pin);
	if (!OK(rv) || !OK(f->C_Logout(*s)) || !OK(login(*s, CKU_USER, S_USER_PIN)))
		return 0;
	reveal(S_USER_PIN, pin);
	reveal(S_NEW_PIN, pin2);
	rv = f->C_SetPIN(*s, pin, PIN_LEN, pin2, PIN_LEN);
	explicit_bzero(pin, sizeof pin);
	explicit_bzero(pin2, sizeof pin2);
	if (!OK(rv) || !OK(f->C_Logout(*s)))
		return 0;
	CHECK(login(*s, CKU_USER, S_USER_PIN) == CKR_PIN_INCORRECT, "the old user PIN still logs in");
	return OK(login(*s, CKU_USER, S_NEW_PIN));
}

/* make_key: a session AES key of the secret value, extractable, not
 * sensitive; read back in both conventions. */
static int make_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *key)
{
	CK_BYTE value[KEY_LEN];
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_KEY_TYPE kt = CKK_AES;
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &cls, sizeof cls},         {CKA_KEY_TYPE, &kt, sizeof kt},
		{CKA_TOKEN, &no, sizeof no},           {CKA_VALUE, value, sizeof value},
		{CKA_ENCRYPT, &yes, sizeof yes},       {CKA_DECRYPT, &yes, sizeof yes},
		{CKA_EXTRACTABLE, &yes, sizeof yes},   {CKA_SENSITIVE, &no, sizeof no},
	};
	reveal(S_KEY, value);
	CK_RV rv = f->C_CreateObject(s, t, sizeof t / sizeof t[0], key);
	explicit_bzero(value, sizeof value);
	if (!OK(rv))
		return 0;
	for (int twocall = 0; twocall < 2; twocall++) {
		CK_BYTE got[KEY_LEN + 8];
		CK_ATTRIBUTE q = {CKA_VALUE, NULL, 0};
		if (twocall && (!OK(f->C_GetAttributeValue(s, *key, &q, 1)) ||
				!CHECK(q.ulValueLen == KEY_LEN, "CKA_VALUE's length %lu", (unsigned long)q.ulValueLen)))
			return 0;
		q.pValue = got;
		q.ulValueLen = twocall ? KEY_LEN : sizeof got;
		rv = f->C_GetAttributeValue(s, *key, &q, 1);
		int same = rv == CKR_OK && q.ulValueLen == KEY_LEN && is_secret(S_KEY, 0, got, KEY_LEN);
		explicit_bzero(got, sizeof got);
		if (!OK(rv) || !CHECK(same, "CKA_VALUE read back is not the value (twocall %d)", twocall))
			return 0;
	}
	return 1;
}

/* round_trip encrypts the secret plaintext and decrypts it again; with
 * twocall, each output's length is asked for first. */
static int round_trip(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, int twocall)
{
	static CK_BYTE iv[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
	CK_MECHANISM m = {CKM_AES_CBC_PAD, iv, sizeof iv};
	CK_BYTE text[TEXT_LEN], ct[TEXT_LEN + 16], out[TEXT_LEN + 16];
	CK_ULONG ct_len = 0, out_len = 0;
	reveal(S_TEXT, text);
	CK_RV rv = f->C_EncryptInit(s, &m, key);
	if (rv == CKR_OK && twocall)
		rv = f->C_Encrypt(s, text, TEXT_LEN, NULL, &ct_len);
	if (rv == CKR_OK) {
		ct_len = sizeof ct;
		rv = f->C_Encrypt(s, text, TEXT_LEN, ct, &ct_len);
	}
	explicit_bzero(text, sizeof text);
	if (!OK(rv) || !CHECK(ct_len == TEXT_LEN + 16, "ciphertext of %lu bytes", (unsigned long)ct_len))
		return 0;
	rv = f->C_DecryptInit(s, &m, key);
	if (rv == CKR_OK && twocall)
		rv = f->C_Decrypt(s, ct, ct_len, NULL, &out_len);
	if (rv == CKR_OK) {
		out_len = sizeof out;
		rv = f->C_Decrypt(s, ct, ct_len, out, &out_len);
	}
	int same = rv == CKR_OK && out_len == TEXT_LEN && is_secret(S_TEXT, 0, out, TEXT_LEN);
	explicit_bzero(out, sizeof out);
	return OK(rv) && CHECK(same, "the plaintext decrypted is not the plaintext (twocall %d)", twocall);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODULE.so\n", argv[0]);
		return 2;
	}
	ctest_start();
	const char *transport = getenv("HSMEMU_TRANSPORT");
	int want_rings = transport != NULL && strcmp(transport, "ring") == 0;

	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	CK_C_GetFunctionList gfl = lib ? (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList") : NULL;
	if (gfl == NULL || gfl(&f) != CKR_OK) {
		fprintf(stderr, "%s: cannot load: %s\n", argv[1], dlerror());
		return 2;
	}

	begin("setup");
	mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
	chunk = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int ready = CHECK(mem >= 0, "cannot open /proc/self/mem") && CHECK(chunk != MAP_FAILED, "no memory") &&
		    CHECK(madvise(chunk, CHUNK, MADV_DONTDUMP) == 0, "MADV_DONTDUMP refused") &&
		    CHECK(make_secrets(), "getrandom failed");
	uint8_t *held = ready ? malloc(KEY_LEN) : NULL;
	if (ready && CHECK(held != NULL, "no memory")) {
		/* The scan can fail: a secret the program holds is found, and
		 * nothing of those it has not used. */
		scan_result r;
		reveal(S_KEY, held);
		ready = CHECK(scan(&r, 0), "cannot read /proc/self/smaps") &&
			CHECK(r.found[S_KEY] >= KEY_LEN / PIECE, "the key's value on the heap: %ld pieces found",
			      r.found[S_KEY]);
		for (int s = 0; ready && s < S_COUNT; s++)
			if (s != S_KEY)
				ready &= CHECK(r.found[s] == 0, "%s found before it was used", secret_name[s]);
		explicit_bzero(held, KEY_LEN);
	} else {
		ready = 0;
	}
	free(held);
	end();
	if (!ready) {
		ctest_done();
		return 1;
	}

	begin("secrets");
	CK_C_INITIALIZE_ARGS ia = {.flags = CKF_OS_LOCKING_OK};
	CK_SESSION_HANDLE s = 0;
	CK_OBJECT_HANDLE key = 0;
	int ok = OK(f->C_Initialize(&ia)) && make_token(&s) && make_key(s, &key);
	for (int round = 0; ok && round < 4; round++)
		ok = round_trip(s, key, round & 1);
	end();

	if (ok) {
		begin("scan");
		check_clean(want_rings);
		end();
	}

	begin("final");
	if (s != 0) {
		OK(f->C_Logout(s));
		OK(f->C_CloseSession(s));
	}
	OK(f->C_Finalize(NULL));
	check_clean(0);
	end();

	close(mem);
	munmap(chunk, CHUNK);
	dlclose(lib);
	return ctest_done();
}
