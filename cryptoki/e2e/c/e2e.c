/*
 * e2e.c: the PKCS#11 module against the real daemon.
 *
 *   e2e MODULE.so
 *
 * HSMEMU_SOCKET names a running `hsmemu serve`; cryptoki/e2e/ctest_test.go
 * starts one and runs this program with the normal and the ASan/UBSan
 * module. The program dlopens the module, takes its function list from
 * C_GetFunctionList and runs these sections in order:
 *
 *   setup    C_InitToken on slot 0 makes a token in a new slot; the SO sets
 *            the user PIN; token and session data objects are created.
 *   fork     a child sees CKR_CRYPTOKI_NOT_INITIALIZED until it calls
 *            C_Initialize, then works as an application of its own; the
 *            parent's connections, sessions, login and handles survive.
 *   threads  16 threads x 1,000 mixed calls, every rv and result checked.
 *   badargs  NULL pointers and bad lengths with a live daemon, and unknown
 *            handles, each with its precise CK_RV.
 *   restart  the driver kills and restarts the daemon under held sessions,
 *            then kills it and starts it again.
 *   tlsfiles with remote daemons, while another thread's first dial
 *            reads tls_ca (a FIFO nothing is written to yet): a fork goes
 *            on at once, and the child initialises and finalises (the
 *            module reads its certificate files outside the lock a fork
 *            waits for); C_Finalize overtakes a C_WaitForSlotEvent there,
 *            which then returns CKR_CRYPTOKI_NOT_INITIALIZED or its result.
 *
 * The restart section talks to the driver over stdin and stdout: it prints
 * "RESTART", "KILL" or "START" on a line of its own and waits for a line
 * "OK". Every failure prints "FAIL [section] e2e.c:LINE: call: rv ..."; the
 * last line is "e2e: N passed, M failed" and the exit status is non-zero on
 * any failure. An alarm ends a section that hangs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define SECTION_ALARM 30 /* seconds a section may take */
#define THREADS 16
#define CALLS_PER_THREAD 1000

/* ---- checks ---- */

/* The counters live in shared memory, so a forked child's checks count. */
static struct counters {
	long passed, failed;
} *cnt;

static const char *volatile section = "init";

static const char *rvname(CK_RV rv)
{
	switch (rv) {
#define N(x) \
	case x:  \
		return #x;
		N(CKR_OK)
		N(CKR_HOST_MEMORY)
		N(CKR_SLOT_ID_INVALID)
		N(CKR_GENERAL_ERROR)
		N(CKR_FUNCTION_FAILED)
		N(CKR_ARGUMENTS_BAD)
		N(CKR_NO_EVENT)
		N(CKR_ATTRIBUTE_READ_ONLY)
		N(CKR_ATTRIBUTE_SENSITIVE)
		N(CKR_ATTRIBUTE_TYPE_INVALID)
		N(CKR_ATTRIBUTE_VALUE_INVALID)
		N(CKR_ACTION_PROHIBITED)
		N(CKR_DEVICE_ERROR)
		N(CKR_DEVICE_MEMORY)
		N(CKR_DEVICE_REMOVED)
		N(CKR_FUNCTION_CANCELED)
		N(CKR_FUNCTION_NOT_SUPPORTED)
		N(CKR_MECHANISM_INVALID)
		N(CKR_OBJECT_HANDLE_INVALID)
		N(CKR_OPERATION_ACTIVE)
		N(CKR_OPERATION_NOT_INITIALIZED)
		N(CKR_PIN_INCORRECT)
		N(CKR_PIN_LEN_RANGE)
		N(CKR_PIN_LOCKED)
		N(CKR_SESSION_CLOSED)
		N(CKR_SESSION_COUNT)
		N(CKR_SESSION_HANDLE_INVALID)
		N(CKR_SESSION_PARALLEL_NOT_SUPPORTED)
		N(CKR_SESSION_READ_ONLY)
		N(CKR_SESSION_EXISTS)
		N(CKR_TEMPLATE_INCOMPLETE)
		N(CKR_TEMPLATE_INCONSISTENT)
		N(CKR_TOKEN_NOT_PRESENT)
		N(CKR_TOKEN_NOT_RECOGNIZED)
		N(CKR_USER_ALREADY_LOGGED_IN)
		N(CKR_USER_NOT_LOGGED_IN)
		N(CKR_USER_PIN_NOT_INITIALIZED)
		N(CKR_USER_TYPE_INVALID)
		N(CKR_BUFFER_TOO_SMALL)
		N(CKR_CRYPTOKI_NOT_INITIALIZED)
		N(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef N
	}
	return "?";
}

static void pass(void)
{
	__atomic_add_fetch(&cnt->passed, 1, __ATOMIC_SEQ_CST);
}

static void failf(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void failf(int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	__atomic_add_fetch(&cnt->failed, 1, __ATOMIC_SEQ_CST);
	printf("FAIL [%s] e2e.c:%d: %s\n", section, line, msg);
}

static int expect_rv(CK_RV got, CK_RV want, const char *call, int line)
{
	if (got == want) {
		pass();
		return 1;
	}
	failf(line, "%s: rv 0x%lx (%s), want %s", call, (unsigned long)got, rvname(got), rvname(want));
	return 0;
}

static int expect_rv2(CK_RV got, CK_RV want1, CK_RV want2, const char *call, int line)
{
	if (got == want1 || got == want2) {
		pass();
		return 1;
	}
	failf(line, "%s: rv 0x%lx (%s), want %s or %s", call, (unsigned long)got, rvname(got), rvname(want1),
	      rvname(want2));
	return 0;
}

#define EXPECT(call, want) expect_rv((call), (want), #call, __LINE__)
#define EXPECT2(call, w1, w2) expect_rv2((call), (w1), (w2), #call, __LINE__)
#define OK(call) EXPECT(call, CKR_OK)
#define CHECK(cond, ...) ((cond) ? (pass(), 1) : (failf(__LINE__, __VA_ARGS__), 0))

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long sec_passed, sec_failed;
static double sec_start;

static void begin(const char *name)
{
	section = name;
	sec_passed = cnt->passed;
	sec_failed = cnt->failed;
	sec_start = now();
	printf("SECTION %s\n", name);
	alarm(SECTION_ALARM);
}

static void end(void)
{
	alarm(0);
	printf("SECTION %s: %ld passed, %ld failed in %.2fs\n", section, cnt->passed - sec_passed,
	       cnt->failed - sec_failed, now() - sec_start);
}

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "FAIL: TIMEOUT: a section took more than 30 s (a call hangs)\n";
	ssize_t n = write(STDOUT_FILENO, msg, sizeof msg - 1);
	(void)n;
	_exit(3);
}

/* driver says a word to the test driver and waits for its "OK". */
static int driver(const char *word)
{
	char line[64];
	alarm(2 * SECTION_ALARM); /* the driver restarts the daemon meanwhile */
	printf("%s\n", word);
	fflush(stdout);
	if (fgets(line, sizeof line, stdin) == NULL || strcmp(line, "OK\n") != 0) {
		failf(__LINE__, "driver did not answer OK to %s", word);
		return 0;
	}
	alarm(SECTION_ALARM);
	return 1;
}

/* ---- fixtures ---- */

static CK_FUNCTION_LIST *f;

static CK_UTF8CHAR token_label[32];
static char label_str[33];
static CK_SLOT_ID slot; /* the token this run made */
static const char so_pin[] = "so-secret-1";
static const char user_pin[] = "user-secret-1";
#define PIN(p) (CK_UTF8CHAR_PTR)(p), (CK_ULONG)strlen(p)

static CK_OBJECT_CLASS c_data = CKO_DATA;
static CK_BBOOL yes = CK_TRUE, no = CK_FALSE;

#define NPUB 3
static CK_OBJECT_HANDLE pub[NPUB], priv, sobj[2];
static char pub_value[NPUB][64];
static const char priv_value[] = "the private token object's secret value";
static CK_SESSION_HANDLE main_s; /* R/W, user logged in */

static CK_RV create_data(CK_SESSION_HANDLE s, CK_BBOOL token, CK_BBOOL private, const char *label,
			 const void *value, size_t len, CK_OBJECT_HANDLE *h)
{
	CK_ATTRIBUTE t[] = {
		{CKA_CLASS, &c_data, sizeof c_data},
		{CKA_TOKEN, token ? &yes : &no, sizeof(CK_BBOOL)},
		{CKA_PRIVATE, private ? &yes : &no, sizeof(CK_BBOOL)},
		{CKA_LABEL, (void *)label, strlen(label)},
		{CKA_VALUE, (void *)value, len},
	};
	return f->C_CreateObject(s, t, sizeof t / sizeof t[0], h);
}

/* find runs a whole search; *n is the number of handles found. */
static CK_RV find(CK_SESSION_HANDLE s, CK_ATTRIBUTE *t, CK_ULONG nt, CK_OBJECT_HANDLE *out, CK_ULONG max,
		  CK_ULONG *n)
{
	CK_RV rv = f->C_FindObjectsInit(s, t, nt);
	*n = 0;
	if (rv != CKR_OK)
		return rv;
	for (;;) {
		CK_ULONG got = 0;
		rv = f->C_FindObjects(s, out + *n, max - *n > 2 ? 2 : max - *n, &got);
		if (rv != CKR_OK || got == 0)
			break;
		*n += got;
		if (*n == max)
			break;
	}
	CK_RV rv2 = f->C_FindObjectsFinal(s);
	return rv != CKR_OK ? rv : rv2;
}

/* find_label finds the data objects labelled label (any label when NULL):
 * token objects when token is 1, session objects when 0, both when -1. */
static CK_RV find_label(CK_SESSION_HANDLE s, const char *label, int token, CK_OBJECT_HANDLE *out, CK_ULONG max,
			CK_ULONG *n)
{
	CK_ATTRIBUTE t[3] = {
		{CKA_CLASS, &c_data, sizeof c_data},
		{CKA_LABEL, (void *)label, label ? strlen(label) : 0},
		{CKA_TOKEN, token ? &yes : &no, sizeof(CK_BBOOL)},
	};
	CK_ULONG nt = 3;
	if (label == NULL) {
		t[1] = t[2];
		nt = 2;
	}
	if (token < 0)
		nt--;
	return find(s, t, nt, out, max, n);
}

/* value_is reads CKA_VALUE with the size query and compares it. */
static int value_is(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h, const char *want, int line)
{
	char buf[128];
	CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
	CK_RV rv = f->C_GetAttributeValue(s, h, &a, 1);
	if (rv != CKR_OK || a.ulValueLen != strlen(want)) {
		failf(line, "CKA_VALUE size query: rv %s, length %lu, want %zu", rvname(rv), a.ulValueLen,
		      strlen(want));
		return 0;
	}
	a.pValue = buf;
	a.ulValueLen = sizeof buf;
	rv = f->C_GetAttributeValue(s, h, &a, 1);
	if (rv != CKR_OK || a.ulValueLen != strlen(want) || memcmp(buf, want, a.ulValueLen) != 0) {
		failf(line, "CKA_VALUE: rv %s, length %lu, not the value written", rvname(rv), a.ulValueLen);
		return 0;
	}
	pass();
	return 1;
}
#define VALUE_IS(s, h, want) value_is((s), (h), (want), __LINE__)

static int session_state(CK_SESSION_HANDLE s, CK_STATE want, int line)
{
	CK_SESSION_INFO si;
	memset(&si, 0, sizeof si);
	CK_RV rv = f->C_GetSessionInfo(s, &si);
	if (rv != CKR_OK || si.state != want || si.slotID != slot) {
		failf(line, "C_GetSessionInfo: rv %s, state %lu slot %lu, want state %lu slot %lu", rvname(rv),
		      si.state, si.slotID, want, slot);
		return 0;
	}
	pass();
	return 1;
}
#define STATE_IS(s, want) session_state((s), (want), __LINE__)

static int has_slot(CK_SLOT_ID want)
{
	CK_SLOT_ID list[64];
	CK_ULONG n = 64;
	if (f->C_GetSlotList(CK_TRUE, list, &n) != CKR_OK)
		return 0;
	for (CK_ULONG i = 0; i < n; i++)
		if (list[i] == want)
			return 1;
	return 0;
}

/* ---- setup ---- */

static void test_setup(void)
{
	begin("setup");
	CK_C_INITIALIZE_ARGS ia;
	memset(&ia, 0, sizeof ia);
	ia.flags = CKF_OS_LOCKING_OK;
	OK(f->C_Initialize(&ia));

	CK_INFO info;
	OK(f->C_GetInfo(&info));
	CHECK(info.cryptokiVersion.major == 2, "C_GetInfo: version %d.%d", info.cryptokiVersion.major,
	      info.cryptokiVersion.minor);

	CK_SLOT_ID list[64];
	CK_ULONG n = 0, n0;
	OK(f->C_GetSlotList(CK_FALSE, NULL, &n));
	n0 = n;
	CHECK(n >= 1, "slot count %lu", n);
	n = 64;
	OK(f->C_GetSlotList(CK_FALSE, list, &n));
	CHECK(n == n0 && list[n - 1] == 0, "slot list of %lu ends with %lu, not the free slot 0", n, n ? list[n - 1] : 99);
	CK_SLOT_INFO si;
	OK(f->C_GetSlotInfo(0, &si));
	CHECK(si.flags & CKF_TOKEN_PRESENT, "slot 0 has its fresh token");
	CK_TOKEN_INFO ti;
	OK(f->C_GetTokenInfo(0, &ti));
	CHECK(!(ti.flags & CKF_TOKEN_INITIALIZED), "slot 0's token is not initialised");

	snprintf(label_str, sizeof label_str, "e2e-%d-%ld", (int)getpid(), (long)time(NULL));
	memset(token_label, ' ', sizeof token_label);
	memcpy(token_label, label_str, strlen(label_str));
	OK(f->C_InitToken(0, PIN(so_pin), token_label));

	/* The new token is in a slot of its own. */
	slot = 0;
	n = 64;
	OK(f->C_GetSlotList(CK_TRUE, list, &n));
	CHECK(n == n0 + 1, "one more slot: %lu then %lu", n0, n);
	for (CK_ULONG i = 0; i < n; i++) {
		if (list[i] != 0 && f->C_GetTokenInfo(list[i], &ti) == CKR_OK &&
		    memcmp(ti.label, token_label, 32) == 0)
			slot = list[i];
	}
	if (!CHECK(slot != 0, "no slot holds the token labelled %s", label_str)) {
		end();
		return;
	}
	OK(f->C_GetTokenInfo(slot, &ti));
	CHECK((ti.flags & CKF_TOKEN_INITIALIZED) && !(ti.flags & CKF_USER_PIN_INITIALIZED),
	      "new token flags 0x%lx", ti.flags);
	/* Slot 0 has a fresh token again. */
	OK(f->C_GetTokenInfo(0, &ti));
	CHECK(!(ti.flags & CKF_TOKEN_INITIALIZED), "slot 0's token is fresh again");

	/* The SO sets the user PIN. */
	CK_SESSION_HANDLE s;
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
	EXPECT(f->C_Login(s, CKU_USER, PIN(user_pin)), CKR_USER_PIN_NOT_INITIALIZED);
	EXPECT(f->C_Login(s, CKU_SO, PIN("wrong-so-pin")), CKR_PIN_INCORRECT);
	OK(f->C_Login(s, CKU_SO, PIN(so_pin)));
	STATE_IS(s, CKS_RW_SO_FUNCTIONS);
	OK(f->C_InitPIN(s, PIN(user_pin)));
	OK(f->C_Logout(s));
	OK(f->C_CloseSession(s));
	OK(f->C_GetTokenInfo(slot, &ti));
	CHECK(ti.flags & CKF_USER_PIN_INITIALIZED, "CKF_USER_PIN_INITIALIZED after C_InitPIN");

	/* Objects: public and private token objects, session objects. */
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &main_s));
	STATE_IS(main_s, CKS_RW_PUBLIC_SESSION);
	EXPECT(create_data(main_s, CK_TRUE, CK_TRUE, "tok-priv", priv_value, strlen(priv_value), &priv),
	       CKR_USER_NOT_LOGGED_IN);
	OK(f->C_Login(main_s, CKU_USER, PIN(user_pin)));
	STATE_IS(main_s, CKS_RW_USER_FUNCTIONS);
	for (int i = 0; i < NPUB; i++) {
		char label[24];
		snprintf(label, sizeof label, "tok-pub-%d", i);
		snprintf(pub_value[i], sizeof pub_value[i], "public value %d of %s", i, label_str);
		OK(create_data(main_s, CK_TRUE, CK_FALSE, label, pub_value[i], strlen(pub_value[i]), &pub[i]));
	}
	OK(create_data(main_s, CK_TRUE, CK_TRUE, "tok-priv", priv_value, strlen(priv_value), &priv));
	OK(create_data(main_s, CK_FALSE, CK_FALSE, "sess-0", "session zero", 12, &sobj[0]));
	OK(create_data(main_s, CK_FALSE, CK_TRUE, "sess-1", "session one", 11, &sobj[1]));

	CK_OBJECT_HANDLE found[16];
	OK(find_label(main_s, NULL, 1, found, 16, &n));
	CHECK(n == NPUB + 1, "token data objects: %lu, want %d", n, NPUB + 1);
	OK(find_label(main_s, NULL, 0, found, 16, &n));
	CHECK(n == 2, "session data objects: %lu, want 2", n);
	OK(find_label(main_s, "tok-pub-1", 1, found, 16, &n));
	CHECK(n == 1 && found[0] == pub[1], "tok-pub-1 found with its handle (n %lu)", n);
	for (int i = 0; i < NPUB; i++)
		VALUE_IS(main_s, pub[i], pub_value[i]);
	VALUE_IS(main_s, priv, priv_value);
	VALUE_IS(main_s, sobj[0], "session zero");
	VALUE_IS(main_s, sobj[1], "session one");

	/* The size-query convention on a short buffer. */
	char small[4];
	CK_ATTRIBUTE a = {CKA_VALUE, small, sizeof small};
	EXPECT(f->C_GetAttributeValue(main_s, priv, &a, 1), CKR_BUFFER_TOO_SMALL);
	CHECK(a.ulValueLen == CK_UNAVAILABLE_INFORMATION, "short buffer length %lu", a.ulValueLen);
	end();
}

/* ---- fork ---- */

struct sock {
	int fd;
	char link[64];
};

/* sockets lists the process's socket descriptors. */
static int sockets(struct sock *out, int max)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	if (d == NULL)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL && n < max;) {
		char path[64], link[64];
		int fd = atoi(e->d_name);
		if (e->d_name[0] == '.' || fd == dirfd(d))
			continue;
		snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
		ssize_t k = readlink(path, link, sizeof link - 1);
		if (k <= 0)
			continue;
		link[k] = 0;
		if (strncmp(link, "socket:", 7) != 0)
			continue;
		out[n].fd = fd;
		memcpy(out[n].link, link, sizeof link);
		n++;
	}
	closedir(d);
	return n;
}

/* sockets_intact checks that the sockets listed before are still open, the
 * same, and neither shut down nor hung up: nothing to read, no hang-up. */
static int sockets_intact(const struct sock *s, int n, const char *when, int line)
{
	for (int i = 0; i < n; i++) {
		char path[64], link[64];
		snprintf(path, sizeof path, "/proc/self/fd/%d", s[i].fd);
		ssize_t k = readlink(path, link, sizeof link - 1);
		link[k > 0 ? k : 0] = 0;
		struct pollfd p = {s[i].fd, POLLIN | POLLRDHUP, 0};
		int r = poll(&p, 1, 0);
		if (strcmp(link, s[i].link) != 0 || r != 0) {
			failf(line, "%s: socket %d (%s) now %s, poll %d revents 0x%x", when, s[i].fd, s[i].link, link,
			      r, r > 0 ? p.revents : 0);
			return 0;
		}
	}
	pass();
	return 1;
}

/* The parent's sockets to the daemon, listed before it forks. */
static struct sock parent_socks[64];
static int parent_nsocks;

/* inherited_closed checks that none of the parent's sockets is open in
 * this child any more. */
static int inherited_closed(int line)
{
	struct sock now[64];
	int n = sockets(now, 64);
	for (int i = 0; i < parent_nsocks; i++)
		for (int j = 0; j < n; j++)
			if (strcmp(parent_socks[i].link, now[j].link) == 0) {
				failf(line, "the child still holds the parent's %s as descriptor %d",
				      parent_socks[i].link, now[j].fd);
				return 0;
			}
	pass();
	return 1;
}

/* child_main is the forked child's test: its exit status is its failures. */
static int child_main(void)
{
	long failed0 = cnt->failed;
	CK_ULONG n = 0;
	CK_INFO info;
	CK_SESSION_HANDLE s;
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	CK_BYTE rnd[8];
	CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};

	section = "fork/child";
	EXPECT(f->C_GetSlotList(CK_FALSE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_GetTokenInfo(slot, &ti), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_GetSessionInfo(main_s, &si), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_GenerateRandom(main_s, rnd, sizeof rnd), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_GetAttributeValue(main_s, priv, &a, 1), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_Login(main_s, CKU_USER, PIN(user_pin)), CKR_CRYPTOKI_NOT_INITIALIZED);
	EXPECT(f->C_CloseSession(main_s), CKR_CRYPTOKI_NOT_INITIALIZED);

	OK(f->C_Initialize(NULL));
	inherited_closed(__LINE__);
	EXPECT(f->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);
	OK(f->C_GetInfo(&info));
	CHECK(has_slot(slot), "child sees the token's slot");
	OK(f->C_GetTokenInfo(slot, &ti));
	CHECK(memcmp(ti.label, token_label, 32) == 0, "child: token label");
	if (!OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s)))
		return 1;
	/* A new application: not logged in, whatever the parent is. */
	STATE_IS(s, CKS_RO_PUBLIC_SESSION);
	CK_OBJECT_HANDLE found[16];
	OK(find_label(s, NULL, 1, found, 16, &n));
	CHECK(n == NPUB, "child before login: %lu token data objects, want the %d public ones", n, NPUB);
	OK(find_label(s, NULL, 0, found, 16, &n));
	CHECK(n == 0, "child: the parent's session objects are not its own (%lu found)", n);
	OK(find_label(s, "tok-pub-2", 1, found, 16, &n));
	if (CHECK(n == 1, "child: tok-pub-2 found %lu times", n))
		VALUE_IS(s, found[0], pub_value[2]);
	OK(f->C_Login(s, CKU_USER, PIN(user_pin)));
	STATE_IS(s, CKS_RO_USER_FUNCTIONS);
	OK(find_label(s, "tok-priv", 1, found, 16, &n));
	if (CHECK(n == 1, "child: tok-priv found %lu times", n))
		VALUE_IS(s, found[0], priv_value);
	OK(f->C_GenerateRandom(s, rnd, sizeof rnd));
	OK(f->C_Logout(s));
	OK(f->C_CloseSession(s));
	OK(f->C_Finalize(NULL));
	fflush(stdout);
	return cnt->failed != failed0;
}

/* parent_works checks that the parent's session, login and handles are as
 * they were. */
static int parent_works(int line)
{
	CK_SESSION_INFO si;
	CK_BYTE rnd[16];
	char buf[64];
	CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof buf};
	CK_RV rv;

	memset(&si, 0, sizeof si);
	if ((rv = f->C_GetSessionInfo(main_s, &si)) != CKR_OK || si.state != CKS_RW_USER_FUNCTIONS) {
		failf(line, "parent C_GetSessionInfo: %s, state %lu", rvname(rv), si.state);
		return 0;
	}
	if ((rv = f->C_GetAttributeValue(main_s, priv, &a, 1)) != CKR_OK || a.ulValueLen != strlen(priv_value) ||
	    memcmp(buf, priv_value, a.ulValueLen) != 0) {
		failf(line, "parent reads its private object: %s", rvname(rv));
		return 0;
	}
	a.ulValueLen = sizeof buf;
	if ((rv = f->C_GetAttributeValue(main_s, sobj[1], &a, 1)) != CKR_OK || a.ulValueLen != 11) {
		failf(line, "parent reads its session object: %s", rvname(rv));
		return 0;
	}
	if ((rv = f->C_GenerateRandom(main_s, rnd, sizeof rnd)) != CKR_OK) {
		failf(line, "parent C_GenerateRandom: %s", rvname(rv));
		return 0;
	}
	return 1;
}

static void test_fork(void)
{
	begin("fork");
	struct sock *socks = parent_socks;
	/* A call first, so that the pool holds an idle connection. */
	CHECK(parent_works(__LINE__), "parent before fork");
	int ns = parent_nsocks = sockets(socks, 64);
	CHECK(ns >= 1, "the parent holds %d sockets to the daemon", ns);

	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0)
		exit(child_main());
	CHECK(pid > 0, "fork");
	/* The parent works while the child does. */
	int status = 0, rounds = 0, ok = 1;
	for (;;) {
		pid_t w = waitpid(pid, &status, WNOHANG);
		if (w == pid || w < 0)
			break;
		if (ok) /* one failure is enough */
			ok = parent_works(__LINE__);
		rounds++;
	}
	CHECK(ok, "parent worked in %d rounds while the child ran", rounds);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status 0x%x", status);
	CHECK(parent_works(__LINE__), "parent after the child");
	sockets_intact(socks, ns, "after the working child", __LINE__);

	/* A child that initialises, dials, finalises and exits. */
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		CK_ULONG n = 0;
		int bad = f->C_Initialize(NULL) != CKR_OK;
		bad |= (f->C_GetSlotList(CK_TRUE, NULL, &n) != CKR_OK || n < 2) << 1;
		bad |= (f->C_Finalize(NULL) != CKR_OK) << 2;
		exit(bad);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork and wait");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "initialise-finalise child: status 0x%x", status);
	sockets_intact(socks, ns, "after the initialise-finalise child", __LINE__);
	CHECK(parent_works(__LINE__), "parent after the initialise-finalise child");

	/* A child that finalises without initialising, and one that just exits. */
	fflush(NULL);
	pid = fork();
	if (pid == 0)
		exit(f->C_Finalize(NULL) == CKR_CRYPTOKI_NOT_INITIALIZED ? 0 : 1);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "finalising child: status 0x%x", status);
	pid = fork();
	if (pid == 0)
		exit(0);
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "exiting child: status 0x%x", status);
	sockets_intact(socks, ns, "after the finalising and exiting children", __LINE__);
	CHECK(parent_works(__LINE__), "parent at the end");
	end();
}

/* ---- threads ---- */

struct worker {
	int id;
	pthread_t t;
	long calls, fails;
};

static void tfail(struct worker *w, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void tfail(struct worker *w, int line, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	__atomic_add_fetch(&cnt->failed, 1, __ATOMIC_SEQ_CST);
	if (++w->fails <= 5)
		printf("FAIL [threads] e2e.c:%d: thread %d call %ld: %s\n", line, w->id, w->calls, msg);
}

static int t_rv(struct worker *w, CK_RV got, CK_RV want, const char *call, int line)
{
	w->calls++;
	if (got == want)
		return 1;
	tfail(w, line, "%s: rv 0x%lx (%s), want %s", call, (unsigned long)got, rvname(got), rvname(want));
	return 0;
}
#define TRV(call, want) t_rv(w, (call), (want), #call, __LINE__)
#define TOK(call) TRV(call, CKR_OK)
#define TCHK(cond, ...) ((cond) ? 1 : (tfail(w, __LINE__, __VA_ARGS__), 0))

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	CK_SESSION_HANDLE s;
	char label[32], value[64], buf[128];
	CK_BYTE rnd[32];
	CK_SESSION_INFO si;
	CK_TOKEN_INFO ti;
	CK_OBJECT_HANDLE found[4], h;
	CK_ULONG n;

	if (!TOK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s)))
		return NULL;
	w->calls = 0;
	for (int i = 0; w->calls < CALLS_PER_THREAD; i++) {
		switch (i % 8) {
		case 0:
			memset(rnd, 0, sizeof rnd);
			if (TOK(f->C_GenerateRandom(s, rnd, sizeof rnd))) {
				int zero = 1;
				for (size_t k = 0; k < sizeof rnd; k++)
					zero &= rnd[k] == 0;
				TCHK(!zero, "C_GenerateRandom left the buffer zero");
			}
			break;
		case 1:
			/* The application's login shows in every session. */
			if (TOK(f->C_GetSessionInfo(s, &si)))
				TCHK(si.slotID == slot && si.state == CKS_RW_USER_FUNCTIONS &&
					     (si.flags & CKF_RW_SESSION),
				     "session info slot %lu state %lu flags 0x%lx", si.slotID, si.state, si.flags);
			break;
		case 2: {
			snprintf(label, sizeof label, "tok-pub-%d", (w->id + i) % NPUB);
			CK_ATTRIBUTE t[] = {{CKA_CLASS, &c_data, sizeof c_data},
					    {CKA_LABEL, label, strlen(label)}};
			if (TOK(f->C_FindObjectsInit(s, t, 2))) {
				n = 99;
				if (TOK(f->C_FindObjects(s, found, 4, &n)))
					TCHK(n == 1 && found[0] == pub[(w->id + i) % NPUB],
					     "found %lu objects labelled %s", n, label);
				TOK(f->C_FindObjectsFinal(s));
			}
			break;
		}
		case 3: {
			int k = (w->id + i) % NPUB;
			CK_ATTRIBUTE a[2] = {{CKA_VALUE, NULL, 0}, {CKA_CLASS, NULL, 0}};
			CK_OBJECT_CLASS cls = 0;
			if (TOK(f->C_GetAttributeValue(s, pub[k], a, 2)))
				TCHK(a[0].ulValueLen == strlen(pub_value[k]) && a[1].ulValueLen == sizeof cls,
				     "size query: %lu, %lu", a[0].ulValueLen, a[1].ulValueLen);
			a[0].pValue = buf;
			a[0].ulValueLen = sizeof buf;
			a[1].pValue = &cls;
			a[1].ulValueLen = sizeof cls;
			if (TOK(f->C_GetAttributeValue(s, pub[k], a, 2)))
				TCHK(a[0].ulValueLen == strlen(pub_value[k]) &&
					     memcmp(buf, pub_value[k], a[0].ulValueLen) == 0 && cls == CKO_DATA,
				     "value of tok-pub-%d, class %lu", k, cls);
			break;
		}
		case 4:
			snprintf(label, sizeof label, "thr-%d-%d", w->id, i);
			snprintf(value, sizeof value, "value of %s", label);
			if (TOK(create_data(s, CK_FALSE, (i / 7) % 2, label, value, strlen(value), &h))) {
				CK_ATTRIBUTE a = {CKA_LABEL, buf, sizeof buf};
				if (TOK(f->C_GetAttributeValue(s, h, &a, 1)))
					TCHK(a.ulValueLen == strlen(label) && memcmp(buf, label, a.ulValueLen) == 0,
					     "label of a new session object");
				TOK(f->C_DestroyObject(s, h));
				a.ulValueLen = sizeof buf;
				TRV(f->C_GetAttributeValue(s, h, &a, 1), CKR_OBJECT_HANDLE_INVALID);
			}
			break;
		case 5:
			if (TOK(f->C_GetTokenInfo(slot, &ti)))
				TCHK(memcmp(ti.label, token_label, 32) == 0 && (ti.flags & CKF_USER_PIN_INITIALIZED) &&
					     ti.ulSessionCount >= 1,
				     "token info flags 0x%lx sessions %lu", ti.flags, ti.ulSessionCount);
			break;
		case 6: {
			CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof buf};
			if (TOK(f->C_GetAttributeValue(s, priv, &a, 1)))
				TCHK(a.ulValueLen == strlen(priv_value) && memcmp(buf, priv_value, a.ulValueLen) == 0,
				     "value of the private object");
			break;
		}
		case 7: {
			/* Digests: the module may hold a C_DigestInit back to
			 * travel with the C_Digest (or its size query), while
			 * other threads make mutating calls (case 4). */
			static const CK_BYTE abc_sha256[32] = {
				0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
				0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
				0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
			CK_MECHANISM m = {CKM_SHA256, NULL, 0};
			CK_BYTE abc[3] = {'a', 'b', 'c'}, md[64];
			if (TOK(f->C_DigestInit(s, &m))) {
				n = 0;
				if ((i / 8) % 2 == 0 && TOK(f->C_Digest(s, abc, 3, NULL, &n)))
					TCHK(n == 32, "digest size query: %lu", n);
				n = sizeof md;
				if (TOK(f->C_Digest(s, abc, 3, md, &n)))
					TCHK(n == 32 && memcmp(md, abc_sha256, 32) == 0, "SHA-256 of abc");
			}
			break;
		}
		}
	}
	long calls = w->calls;
	TOK(f->C_CloseSession(s));
	w->calls = calls;
	return NULL;
}

static void test_threads(void)
{
	begin("threads");
	struct worker w[THREADS];
	double t0 = now();
	for (int i = 0; i < THREADS; i++) {
		memset(&w[i], 0, sizeof w[i]);
		w[i].id = i;
		if (pthread_create(&w[i].t, NULL, worker_main, &w[i]) != 0) {
			failf(__LINE__, "pthread_create %d", i);
			w[i].id = -1;
		}
	}
	long calls = 0;
	for (int i = 0; i < THREADS; i++) {
		if (w[i].id < 0)
			continue;
		pthread_join(w[i].t, NULL);
		calls += w[i].calls;
		CHECK(w[i].fails == 0 && w[i].calls >= CALLS_PER_THREAD, "thread %d: %ld calls, %ld failures", i,
		      w[i].calls, w[i].fails);
	}
	double dt = now() - t0;
	printf("threads: %d threads, %ld calls in %.2fs: %.0f calls/s\n", THREADS, calls, dt, (double)calls / dt);
	/* Every session object the threads made is gone. */
	CK_OBJECT_HANDLE found[16];
	CK_ULONG n;
	OK(find_label(main_s, NULL, 0, found, 16, &n));
	CHECK(n == 2, "session data objects after the threads: %lu, want 2", n);
	end();
}

/* ---- bad arguments with a live daemon ---- */

static void test_badargs(void)
{
	begin("badargs");
	CK_SESSION_HANDLE s;
	CK_OBJECT_HANDLE h, found[4];
	CK_ULONG n;
	CK_BYTE buf[32];
	CK_SESSION_INFO si;
	CK_SLOT_INFO sli;
	CK_TOKEN_INFO ti;
	CK_MECHANISM_INFO mi;
	CK_ATTRIBUTE a = {CKA_VALUE, NULL, 0};
	CK_ATTRIBUTE t[] = {{CKA_CLASS, &c_data, sizeof c_data}, {CKA_TOKEN, &no, sizeof no}};
	CK_MECHANISM m = {CKM_MD5, NULL, 0};

	s = main_s;
	/* Caught by the module. */
	EXPECT(f->C_GetAttributeValue(s, pub[0], NULL, 1), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_SetAttributeValue(s, sobj[0], NULL, 1), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_FindObjectsInit(s, NULL, 1), CKR_ARGUMENTS_BAD);
	OK(f->C_FindObjectsInit(s, t, 1));
	EXPECT(f->C_FindObjects(s, NULL, 4, &n), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_FindObjects(s, found, 4, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_FindObjectsInit(s, t, 1), CKR_OPERATION_ACTIVE); /* still in progress */
	OK(f->C_FindObjectsFinal(s));
	EXPECT(f->C_GenerateRandom(s, NULL, 16), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_SeedRandom(s, NULL, 4), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_Login(s, CKU_USER, NULL, 4), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetSessionInfo(s, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_CreateObject(s, NULL, 2, &h), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_CreateObject(s, t, 2, NULL), CKR_ARGUMENTS_BAD);
	CK_ATTRIBUTE nullvalue = {CKA_LABEL, NULL, 4};
	EXPECT(f->C_CreateObject(s, &nullvalue, 1, &h), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_CopyObject(s, sobj[0], NULL, 1, &h), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_CopyObject(s, sobj[0], t, 1, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetObjectSize(s, sobj[0], NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_SetPIN(s, NULL, 4, PIN("new-pin-1")), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_SetPIN(s, PIN(user_pin), NULL, 4), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_InitPIN(s, NULL, 4), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_InitToken(0, PIN(so_pin), NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_InitToken(0, NULL, 4, token_label), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetSlotList(CK_FALSE, NULL, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetSlotList(CK_TRUE, found, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetSlotInfo(slot, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetMechanismList(slot, NULL, NULL), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_GetMechanismInfo(slot, CKM_SHA256, NULL), CKR_ARGUMENTS_BAD);
	/* An Init with no mechanism ends the operation of its kind (3.0):
	 * none is active here. */
	EXPECT(f->C_DigestInit(s, NULL), CKR_OK);
	EXPECT(f->C_EncryptInit(s, NULL, pub[0]), CKR_OK);
	/* Not supported: so whatever the arguments. */
	EXPECT(f->C_GetOperationState(s, NULL, NULL), CKR_FUNCTION_NOT_SUPPORTED);
	EXPECT(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, NULL, NULL), CKR_ARGUMENTS_BAD);

	/* NULL with a zero length reaches the daemon, which decides. */
	OK(f->C_GenerateRandom(s, NULL, 0));
	OK(f->C_GetAttributeValue(s, pub[0], NULL, 0));
	OK(f->C_FindObjectsInit(s, NULL, 0));
	n = 99;
	OK(f->C_FindObjects(s, NULL, 0, &n));
	CHECK(n == 0, "C_FindObjects of at most 0: %lu", n);
	OK(f->C_FindObjectsFinal(s));
	EXPECT(f->C_CreateObject(s, NULL, 0, &h), CKR_TEMPLATE_INCOMPLETE);
	EXPECT(f->C_Login(s, CKU_USER, NULL, 0), CKR_ARGUMENTS_BAD); /* no protected path */
	EXPECT(f->C_SetPIN(s, NULL, 0, PIN("new-pin-1")), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_InitPIN(s, NULL, 0), CKR_ARGUMENTS_BAD);
	EXPECT(f->C_InitToken(0, NULL, 0, token_label), CKR_ARGUMENTS_BAD);
	/* Bad lengths the daemon judges. */
	EXPECT(f->C_InitToken(0, PIN("12"), token_label), CKR_PIN_LEN_RANGE);
	EXPECT(f->C_SetPIN(s, PIN(user_pin), PIN("12")), CKR_PIN_LEN_RANGE);
	CK_ULONG three = 3;
	CK_ATTRIBUTE badclass[] = {{CKA_CLASS, &three, 3}};
	EXPECT(f->C_CreateObject(s, badclass, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID);
	EXPECT(f->C_GenerateRandom(s, buf, 0), CKR_OK);

	EXPECT(f->C_DigestInit(s, &m), CKR_MECHANISM_INVALID);

	/* Unknown handles and slots. */
	EXPECT(f->C_GetSessionInfo(0, &si), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetSessionInfo(0xdeadbeef, &si), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_CloseSession(0xdeadbeef), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GenerateRandom(0xdeadbeef, buf, sizeof buf), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_FindObjectsInit(0xdeadbeef, t, 1), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_Login(0xdeadbeef, CKU_USER, PIN(user_pin)), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(0xdeadbeef, pub[0], &a, 1), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(s, 0, &a, 1), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(s, 0xdeadbeef, &a, 1), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_DestroyObject(s, 0xdeadbeef), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_GetObjectSize(s, 0xdeadbeef, &n), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_CopyObject(s, 0xdeadbeef, t, 1, &h), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_SetAttributeValue(s, 0xdeadbeef, t, 1), CKR_OBJECT_HANDLE_INVALID);
	EXPECT(f->C_GetSlotInfo(0xdead, &sli), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_GetTokenInfo(0xdead, &ti), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_OpenSession(0xdead, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_CloseAllSessions(0xdead), CKR_SLOT_ID_INVALID);
	n = 0;
	EXPECT(f->C_GetMechanismList(0xdead, NULL, &n), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_GetMechanismInfo(0xdead, CKM_SHA256, &mi), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_InitToken(0xdead, PIN(so_pin), token_label), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &h), CKR_TOKEN_NOT_RECOGNIZED);
	EXPECT(f->C_OpenSession(slot, CKF_RW_SESSION, NULL, NULL, &h), CKR_SESSION_PARALLEL_NOT_SUPPORTED);

	/* A closed session and a destroyed object are unknown from then on. */
	CK_SESSION_HANDLE s2;
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s2));
	OK(create_data(s2, CK_FALSE, CK_FALSE, "doomed", "x", 1, &h));
	OK(f->C_GetAttributeValue(s, h, &a, 1)); /* visible from another session */
	OK(f->C_CloseSession(s2));
	EXPECT(f->C_GetSessionInfo(s2, &si), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_CloseSession(s2), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(s, h, &a, 1), CKR_OBJECT_HANDLE_INVALID); /* went with its session */
	OK(create_data(s, CK_FALSE, CK_FALSE, "doomed", "x", 1, &h));
	OK(f->C_DestroyObject(s, h));
	EXPECT(f->C_DestroyObject(s, h), CKR_OBJECT_HANDLE_INVALID);

	/* All that left the session and the login as they were. */
	CHECK(parent_works(__LINE__), "session works after the bad calls");
	end();
}

/* ---- restart ---- */

static void test_restart(void)
{
	begin("restart");
	CK_SESSION_HANDLE ro, s;
	CK_SESSION_INFO si;
	CK_SLOT_INFO sli;
	CK_TOKEN_INFO ti;
	CK_BYTE rnd[16];
	CK_OBJECT_HANDLE found[16];
	CK_ULONG n;
	char buf[64];
	CK_ATTRIBUTE a = {CKA_VALUE, buf, sizeof buf};

	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro));
	OK(f->C_FindObjectsInit(ro, NULL, 0)); /* an operation in progress */
	CHECK(parent_works(__LINE__), "before the restart");

	if (!driver("RESTART")) {
		end();
		return;
	}
	/* The old handles first: the new daemon may hand the same numbers
	 * out again once sessions are opened. */
	EXPECT2(f->C_GetSessionInfo(main_s, &si), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT2(f->C_GenerateRandom(main_s, rnd, sizeof rnd), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT2(f->C_FindObjects(ro, found, 16, &n), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT2(f->C_GetAttributeValue(main_s, priv, &a, 1), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT2(f->C_Login(main_s, CKU_USER, PIN(user_pin)), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT2(f->C_CloseSession(ro), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT(f->C_GetSessionInfo(main_s, &si), CKR_SESSION_HANDLE_INVALID);
	/* Reconnected: the token and its objects are there, the session
	 * objects and the login are not. */
	n = 0;
	OK(f->C_GetSlotList(CK_TRUE, NULL, &n));
	CHECK(n >= 2 && has_slot(slot), "slot %lu is back (%lu slots)", slot, n);
	OK(f->C_GetSlotInfo(slot, &sli));
	CHECK(sli.flags & CKF_TOKEN_PRESENT, "token present after the restart");
	OK(f->C_GetTokenInfo(slot, &ti));
	CHECK(memcmp(ti.label, token_label, 32) == 0 && (ti.flags & CKF_USER_PIN_INITIALIZED),
	      "token label and PIN after the restart");
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
	STATE_IS(s, CKS_RW_PUBLIC_SESSION);
	OK(find_label(s, NULL, 1, found, 16, &n));
	CHECK(n == NPUB, "public token objects after the restart: %lu, want %d", n, NPUB);
	OK(find_label(s, NULL, 0, found, 16, &n));
	CHECK(n == 0, "session objects after the restart: %lu, want 0", n);
	OK(f->C_Login(s, CKU_USER, PIN(user_pin)));
	STATE_IS(s, CKS_RW_USER_FUNCTIONS);
	OK(find_label(s, NULL, -1, found, 16, &n));
	CHECK(n == NPUB + 1, "data objects after login: %lu, want %d", n, NPUB + 1);
	OK(find_label(s, "tok-priv", 1, found, 16, &n));
	if (CHECK(n == 1, "tok-priv found %lu times", n))
		VALUE_IS(s, found[0], priv_value);
	/* The old handles stay invalid now that new sessions and objects have
	 * handles: the application's new life has a new handle epoch. */
	CHECK(s != main_s && s != ro && found[0] != priv, "handles of before the restart came back: %#lx %#lx",
	      (unsigned long)s, (unsigned long)found[0]);
	EXPECT(f->C_GetSessionInfo(main_s, &si), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetSessionInfo(ro, &si), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(s, priv, &a, 1), CKR_OBJECT_HANDLE_INVALID);
	for (int i = 0; i < NPUB; i++) {
		char label[24];
		snprintf(label, sizeof label, "tok-pub-%d", i);
		OK(find_label(s, label, 1, found, 16, &n));
		if (CHECK(n == 1, "%s found %lu times", label, n))
			VALUE_IS(s, found[0], pub_value[i]);
	}

	/* The daemon is down: slot 0 without a token, clean failures, fast. */
	if (!driver("KILL")) {
		end();
		return;
	}
	double t0 = now();
	EXPECT2(f->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_REMOVED);
	EXPECT(f->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID);
	CK_SLOT_ID list[8];
	n = 8;
	OK(f->C_GetSlotList(CK_FALSE, list, &n));
	CHECK(n == 1 && list[0] == 0, "daemon down: %lu slots, first %lu; want slot 0 only", n, n ? list[0] : 99);
	n = 8;
	OK(f->C_GetSlotList(CK_TRUE, list, &n));
	CHECK(n == 0, "daemon down: %lu slots with a token", n);
	OK(f->C_GetSlotInfo(0, &sli));
	CHECK(!(sli.flags & CKF_TOKEN_PRESENT), "daemon down: slot 0 has no token");
	EXPECT(f->C_GetTokenInfo(0, &ti), CKR_TOKEN_NOT_PRESENT);
	EXPECT(f->C_GetTokenInfo(slot, &ti), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_TOKEN_NOT_PRESENT);
	EXPECT(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &ro), CKR_SLOT_ID_INVALID);
	EXPECT(f->C_GenerateRandom(s, rnd, sizeof rnd), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_Login(s, CKU_USER, PIN(user_pin)), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_GetAttributeValue(s, priv, &a, 1), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_FindObjectsInit(s, NULL, 0), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
	EXPECT(f->C_WaitForSlotEvent(CKF_DONT_BLOCK, list, NULL), CKR_NO_EVENT);
	double dt = now() - t0;
	CHECK(dt < 2, "calls with the daemon down took %.2fs", dt);

	/* It comes back. */
	if (!driver("START")) {
		end();
		return;
	}
	CHECK(has_slot(slot), "slot %lu is back after the start", slot);
	EXPECT(f->C_GetSessionInfo(s, &si), CKR_SESSION_HANDLE_INVALID);
	OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s));
	OK(f->C_Login(s, CKU_USER, PIN(user_pin)));
	STATE_IS(s, CKS_RO_USER_FUNCTIONS);
	OK(find_label(s, "tok-priv", 1, found, 16, &n));
	if (CHECK(n == 1, "tok-priv found %lu times after the start", n))
		VALUE_IS(s, found[0], priv_value);
	OK(f->C_Logout(s));
	OK(f->C_CloseSession(s));
	end();
}

/* ---- tlsfiles ---- */

static pid_t reader_tid;
static CK_RV reader_rv;
static CK_ULONG reader_n;

static void *first_dial(void *arg)
{
	(void)arg;
	__atomic_store_n(&reader_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	reader_rv = f->C_GetSlotList(CK_TRUE, NULL, &reader_n);
	return NULL;
}

static void *first_wait(void *arg)
{
	(void)arg;
	CK_SLOT_ID s;
	__atomic_store_n(&reader_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	reader_rv = f->C_WaitForSlotEvent(CKF_DONT_BLOCK, &s, NULL);
	return NULL;
}

/* in_open says whether thread tid waits in open(2) (its /proc syscall
 * file): a FIFO's open waits for a writer. */
static int in_open(pid_t tid)
{
	char path[64], buf[128];
	snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	ssize_t k = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (k <= 0)
		return 0;
	buf[k] = 0;
	if (buf[0] < '0' || buf[0] > '9')
		return 0;
	long nr = strtol(buf, NULL, 10);
	return nr == SYS_openat
#ifdef SYS_open
	       || nr == SYS_open
#endif
		;
}

/* feed writes the CA into the FIFO a dial waits to read. */
static void feed(const char *fifo, const char *pem, ssize_t npem)
{
	int w = open(fifo, O_WRONLY | O_CLOEXEC);
	CHECK(w >= 0 && write(w, pem, (size_t)npem) == npem, "write the FIFO");
	if (w >= 0)
		close(w);
}

/* start_reader initialises with tls_ca the FIFO and starts fn, whose
 * first dial waits in open(2) for it. */
static void start_reader(pthread_t *t, void *(*fn)(void *), const char *fifo, const char *ca)
{
	setenv("HSMEMU_TLS_CA", fifo, 1); /* read at C_Initialize */
	OK(f->C_Initialize(NULL));
	setenv("HSMEMU_TLS_CA", ca, 1);
	__atomic_store_n(&reader_tid, 0, __ATOMIC_SEQ_CST);
	pthread_create(t, NULL, fn, NULL);
	pid_t tid;
	while ((tid = __atomic_load_n(&reader_tid, __ATOMIC_SEQ_CST)) == 0 || !in_open(tid))
		usleep(1000);
}

static void test_tlsfiles(void)
{
	begin("tlsfiles");
	const char *ca = getenv("HSMEMU_TLS_CA");
	if (ca == NULL || getenv("HSMEMU_SERVER") == NULL) {
		pass(); /* the Unix socket: no certificate files */
		end();
		return;
	}
	/* The CA's PEM, to write into the FIFO. */
	char pem[16384];
	int fd = open(ca, O_RDONLY | O_CLOEXEC);
	ssize_t npem = fd >= 0 ? read(fd, pem, sizeof pem) : -1;
	if (fd >= 0)
		close(fd);
	char dir[] = "/tmp/e2e-fifo-XXXXXX", fifo[64];
	if (!CHECK(npem > 0, "read %s", ca) || !CHECK(mkdtemp(dir) != NULL, "mkdtemp")) {
		end();
		return;
	}
	snprintf(fifo, sizeof fifo, "%s/ca.pem", dir);
	CHECK(mkfifo(fifo, 0600) == 0, "mkfifo");
	char *saved = strdup(ca);
	OK(f->C_Finalize(NULL));
	pthread_t a;
	start_reader(&a, first_dial, fifo, saved);
	/* A fork that waited for the reader would wait for ever: the
	 * section's alarm says so. */
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		/* No dial: a thread of the parent is inside libcrypto. */
		int bad = f->C_Initialize(NULL) != CKR_OK;
		bad |= (f->C_Finalize(NULL) != CKR_OK) << 1;
		_exit(bad);
	}
	int status = 0;
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "child forked while tls_ca is read: status 0x%x", status);
	/* Now the reader gets its CA. */
	feed(fifo, pem, npem);
	pthread_join(a, NULL);
	EXPECT(reader_rv, CKR_OK);
	CHECK(reader_n >= 2, "the first dial, once tls_ca was read: %lu slots", reader_n);
	OK(f->C_Finalize(NULL));

	/* C_Finalize overtakes the dial of a C_WaitForSlotEvent, which
	 * goes on once it returned: the TLS layer's state must outlast it. */
	start_reader(&a, first_wait, fifo, saved);
	OK(f->C_Finalize(NULL));
	feed(fifo, pem, npem);
	pthread_join(a, NULL);
	CHECK(reader_rv == CKR_CRYPTOKI_NOT_INITIALIZED || reader_rv == CKR_NO_EVENT,
	      "C_WaitForSlotEvent overtaken by C_Finalize in its first dial: rv 0x%lx", (unsigned long)reader_rv);
	OK(f->C_Initialize(NULL));
	OK(f->C_GetSlotList(CK_TRUE, NULL, &reader_n));
	unlink(fifo);
	rmdir(dir);
	free(saved);
	end();
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODULE.so\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	cnt = mmap(NULL, sizeof *cnt, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (cnt == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	signal(SIGALRM, on_alarm);
	alarm(SECTION_ALARM);

	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
		return 2;
	}
	CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
	if (gfl == NULL || gfl(&f) != CKR_OK) {
		fprintf(stderr, "%s: no C_GetFunctionList\n", argv[1]);
		return 2;
	}

	test_setup();
	if (slot != 0) {
		test_fork();
		test_threads();
		test_badargs();
		test_restart();
		test_tlsfiles();
	}
	section = "finalize";
	OK(f->C_Finalize(NULL));
	EXPECT(f->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
	dlclose(lib);
	printf("e2e: %ld passed, %ld failed\n", cnt->passed, cnt->failed);
	return cnt->failed ? 1 : 0;
}
