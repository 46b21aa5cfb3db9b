/*
 * module_test.c: tests of hsm-pkcs11.so that need no daemon.
 *
 *   module_test MODULE.so
 *
 * dlopens the module and checks: its exports; that loading and
 * C_Initialize do nothing visible (no thread, no descriptor); the rules of
 * C_Initialize and C_Finalize; C_GetInfo, the function lists and
 * interfaces; the answers while no daemon runs; every stub's argument
 * checks (generated from the call table); threads; and fork. It prints
 * "N passed, N failed" and exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stddef.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

static int passed, failed;

static void check(int ok, const char *fmt, ...)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "FAIL: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
}

#define CHECK_RV(got, want, what)                                                        \
	do {                                                                             \
		CK_RV g_ = (got), w_ = (want);                                           \
		check(g_ == w_, "%s: got 0x%lx, want 0x%lx", (what), (unsigned long)g_, \
		      (unsigned long)w_);                                                \
	} while (0)

void argcase_expect(CK_RV got, CK_RV want, const char *what)
{
	CHECK_RV(got, want, what);
}

/* ---- fixtures for the generated cases ---- */

CK_BYTE t_bytes[64];
CK_UTF8CHAR t_label[32];
static CK_ULONG t_class;
CK_ATTRIBUTE t_template[1];
CK_MECHANISM t_mechanism;
CK_ULONG t_ulong;
CK_BYTE t_out[64];
CK_ULONG t_out_len;
CK_ULONG t_list[8];
CK_ULONG t_list_count;

void t_reset(void)
{
	memset(t_bytes, 'b', sizeof t_bytes);
	memset(t_label, ' ', sizeof t_label);
	t_class = CKO_SECRET_KEY;
	t_template[0].type = CKA_CLASS;
	t_template[0].pValue = &t_class;
	t_template[0].ulValueLen = sizeof t_class;
	t_mechanism.mechanism = CKM_SHA256;
	t_mechanism.pParameter = NULL;
	t_mechanism.ulParameterLen = 0;
	t_ulong = 0;
	t_out_len = sizeof t_out;
	t_list_count = sizeof t_list / sizeof t_list[0];
}

/* ---- what the process looks like ---- */

static int count_dir(const char *path)
{
	DIR *d = opendir(path);
	int n = 0;
	if (d == NULL)
		return -1;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* opendir's own descriptor, or nothing for tasks */
}

static int fds(void)
{
	return count_dir("/proc/self/fd");
}

static int threads(void)
{
	return count_dir("/proc/self/task") + 1;
}

/* ---- application mutex callbacks ---- */

static int n_create, n_destroy, n_lock, n_unlock, fail_create;

static CK_RV app_create(CK_VOID_PTR_PTR m)
{
	if (fail_create)
		return CKR_HOST_MEMORY;
	pthread_mutex_t *mu = malloc(sizeof *mu);
	pthread_mutex_init(mu, NULL);
	*m = mu;
	__atomic_add_fetch(&n_create, 1, __ATOMIC_SEQ_CST);
	return CKR_OK;
}

static CK_RV app_destroy(CK_VOID_PTR m)
{
	pthread_mutex_destroy(m);
	free(m);
	__atomic_add_fetch(&n_destroy, 1, __ATOMIC_SEQ_CST);
	return CKR_OK;
}

static CK_RV app_lock(CK_VOID_PTR m)
{
	pthread_mutex_lock(m);
	__atomic_add_fetch(&n_lock, 1, __ATOMIC_SEQ_CST);
	return CKR_OK;
}

static CK_RV app_unlock(CK_VOID_PTR m)
{
	__atomic_add_fetch(&n_unlock, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(m);
	return CKR_OK;
}

/* ---- the tests ---- */

static CK_FUNCTION_LIST *f2;
static CK_FUNCTION_LIST_3_0 *f3;
static CK_FUNCTION_LIST_3_2 *f32;

static void test_exports(void *lib)
{
	static const char *const want[] = {"C_GetFunctionList", "C_GetInterfaceList", "C_GetInterface"};
	static const char *const hidden[] = {"C_Initialize", "C_Finalize", "C_GetInfo", "C_Encrypt",
					     "C_GetSlotList", "C_LoginUser", "hsm_entry",
					     "hsm_function_list", "hsm_call_run"};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		check(dlsym(lib, want[i]) != NULL, "%s is exported", want[i]);
	for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
		check(dlsym(lib, hidden[i]) == NULL, "%s is not exported", hidden[i]);
}

static void test_lists(void *lib)
{
	CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
	CK_C_GetInterfaceList gil = (CK_C_GetInterfaceList)dlsym(lib, "C_GetInterfaceList");
	CK_C_GetInterface gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
	CK_INTERFACE_PTR itf;
	CK_INTERFACE list[4];
	CK_ULONG n;

	CHECK_RV(gfl(NULL), CKR_ARGUMENTS_BAD, "C_GetFunctionList(NULL)");
	CHECK_RV(gfl(&f2), CKR_OK, "C_GetFunctionList");
	check(f2->version.major == 2 && f2->version.minor == 40, "function list is 2.40");
	check(f2->C_GetFunctionList == gfl, "list's C_GetFunctionList is the export");

	CHECK_RV(gil(NULL, NULL), CKR_ARGUMENTS_BAD, "C_GetInterfaceList(NULL, NULL)");
	CHECK_RV(gil(NULL, &n), CKR_OK, "C_GetInterfaceList size");
	check(n == 3, "three interfaces, got %lu", n);
	n = 2;
	CHECK_RV(gil(list, &n), CKR_BUFFER_TOO_SMALL, "C_GetInterfaceList short");
	check(n == 3, "short buffer reports 3, got %lu", n);
	n = 4;
	CHECK_RV(gil(list, &n), CKR_OK, "C_GetInterfaceList");
	static const CK_VERSION versions[] = {{3, 0}, {3, 2}, {2, 40}};
	for (CK_ULONG i = 0; i < 3 && n == 3; i++) {
		CK_VERSION *v = list[i].pFunctionList;
		check(strcmp((char *)list[i].pInterfaceName, "PKCS 11") == 0, "interface %lu name", i);
		check(list[i].flags & CKF_INTERFACE_FORK_SAFE, "interface %lu is fork-safe", i);
		check(v->major == versions[i].major && v->minor == versions[i].minor, "interface %lu version", i);
	}

	CHECK_RV(gi(NULL, NULL, NULL, 0), CKR_ARGUMENTS_BAD, "C_GetInterface(ppInterface NULL)");
	CHECK_RV(gi(NULL, NULL, &itf, 0), CKR_OK, "C_GetInterface default");
	f3 = itf->pFunctionList;
	check(f3->version.major == 3 && f3->version.minor == 0, "default interface is 3.0");
	check(itf->flags & CKF_INTERFACE_FORK_SAFE, "3.0 interface has CKF_INTERFACE_FORK_SAFE");
	CHECK_RV(gi((CK_UTF8CHAR_PTR) "PKCS 11", NULL, &itf, CKF_INTERFACE_FORK_SAFE), CKR_OK,
		 "C_GetInterface fork-safe");
	/* The 2.40 list is the 3.0 list's first 68 functions, one for one
	 * (C_GetInfo apart: each says its own version), and ends there. */
	typedef void (*fn)(void);
	const fn *l2 = (const fn *)(const void *)&f2->C_Initialize;
	const fn *l3 = (const fn *)(const void *)&f3->C_Initialize;
	size_t n2 = (sizeof *f2 - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(fn);
	check(n2 == 68 && offsetof(CK_FUNCTION_LIST, C_WaitForSlotEvent) == sizeof *f2 - sizeof(fn),
	      "the 2.40 list holds 68 functions, to C_WaitForSlotEvent: %zu", n2);
	for (size_t i = 0; i < n2; i++) {
		check(l2[i] != NULL, "2.40 function %zu is there", i);
		if (i != (offsetof(CK_FUNCTION_LIST, C_GetInfo) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(fn))
			check(l2[i] == l3[i], "2.40 function %zu is the 3.0 list's", i);
	}
	check(f2->C_GetInfo != f3->C_GetInfo, "each list's C_GetInfo says its version");
	/* The 3.0 additions are there, each its own function. */
	const fn *add = (const fn *)(const void *)&f3->C_GetInterfaceList;
	size_t n3 = (sizeof *f3 - offsetof(CK_FUNCTION_LIST_3_0, C_GetInterfaceList)) / sizeof(fn);
	check(n3 == 24, "24 functions added in 3.0: %zu", n3);
	for (size_t i = 0; i < n3; i++) {
		check(add[i] != NULL, "3.0 function %zu is there", i);
		for (size_t j = 0; j < i; j++)
			check(add[i] != add[j], "3.0 functions %zu and %zu differ", j, i);
	}
	CK_VERSION v240 = {2, 40}, v30 = {3, 0}, v31 = {3, 1}, v32 = {3, 2};
	CHECK_RV(gi((CK_UTF8CHAR_PTR) "PKCS 11", &v240, &itf, 0), CKR_OK, "C_GetInterface 2.40");
	check(itf->pFunctionList == (void *)f2, "2.40 interface is C_GetFunctionList's list");
	CHECK_RV(gi(NULL, &v30, &itf, 0), CKR_OK, "C_GetInterface 3.0");
	check(itf->pFunctionList == (void *)f3, "3.0 interface");
	CHECK_RV(gi(NULL, &v31, &itf, 0), CKR_ARGUMENTS_BAD, "C_GetInterface 3.1");
	CHECK_RV(gi((CK_UTF8CHAR_PTR) "PKCS 11", &v32, &itf, CKF_INTERFACE_FORK_SAFE), CKR_OK, "C_GetInterface 3.2");
	f32 = itf->pFunctionList;
	check(f32->version.major == 3 && f32->version.minor == 2, "3.2 interface says 3.2");
	/* The 3.2 list is the 3.0 list, one for one (C_GetInfo apart), and 12
	 * functions more, each its own. */
	const fn *l32 = (const fn *)(const void *)&f32->C_Initialize;
	size_t n30 = (sizeof *f3 - offsetof(CK_FUNCTION_LIST_3_0, C_Initialize)) / sizeof(fn);
	for (size_t i = 0; i < n30; i++) {
		if (i != (offsetof(CK_FUNCTION_LIST, C_GetInfo) - offsetof(CK_FUNCTION_LIST, C_Initialize)) / sizeof(fn))
			check(l32[i] == l3[i], "3.0 function %zu is the 3.2 list's", i);
	}
	check(f32->C_GetInfo != f3->C_GetInfo, "the 3.2 list's C_GetInfo says its version");
	const fn *add32 = (const fn *)(const void *)&f32->C_EncapsulateKey;
	size_t n32 = (sizeof *f32 - offsetof(CK_FUNCTION_LIST_3_2, C_EncapsulateKey)) / sizeof(fn);
	check(n32 == 12, "12 functions added in 3.2: %zu", n32);
	for (size_t i = 0; i < n32; i++) {
		check(add32[i] != NULL, "3.2 function %zu is there", i);
		for (size_t j = 0; j < n30; j++)
			check(add32[i] != l32[j], "3.2 function %zu is new", i);
		for (size_t j = 0; j < i; j++)
			check(add32[i] != add32[j], "3.2 functions %zu and %zu differ", j, i);
	}
	CHECK_RV(gi((CK_UTF8CHAR_PTR) "Vendor", NULL, &itf, 0), CKR_ARGUMENTS_BAD, "C_GetInterface Vendor");
	CHECK_RV(gi(NULL, NULL, &itf, 0x2), CKR_ARGUMENTS_BAD, "C_GetInterface unknown flag");
	check(f3->C_GetInterface == gi && f3->C_GetInterfaceList == gil, "3.0 list has the exports");
}

static void test_not_initialized(void)
{
	CK_INFO info;
	CHECK_RV(f2->C_GetInfo(&info), CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetInfo before init");
	CHECK_RV(f2->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize before init");
	CHECK_RV(f2->C_GetFunctionStatus(1), CKR_CRYPTOKI_NOT_INITIALIZED, "C_GetFunctionStatus before init");
	CHECK_RV(f3->C_SignMessageBegin(1, NULL, 0), CKR_CRYPTOKI_NOT_INITIALIZED,
		 "C_SignMessageBegin before init");
	hsm_argcases(f32, 0);
	CHECK_RV(f32->C_AsyncGetID(1, (CK_UTF8CHAR_PTR) "C_Sign", NULL), CKR_CRYPTOKI_NOT_INITIALIZED,
		 "C_AsyncGetID before init");
}

static void test_initialize(void)
{
	CK_C_INITIALIZE_ARGS a;

	memset(&a, 0, sizeof a);
	a.pReserved = &a;
	CHECK_RV(f2->C_Initialize(&a), CKR_ARGUMENTS_BAD, "C_Initialize pReserved");
	memset(&a, 0, sizeof a);
	a.CreateMutex = app_create;
	CHECK_RV(f2->C_Initialize(&a), CKR_ARGUMENTS_BAD, "C_Initialize one callback");
	a.DestroyMutex = app_destroy;
	a.LockMutex = app_lock;
	CHECK_RV(f2->C_Initialize(&a), CKR_ARGUMENTS_BAD, "C_Initialize three callbacks");
	CHECK_RV(f2->C_Finalize((void *)1), CKR_ARGUMENTS_BAD, "C_Finalize(non-NULL)");

	CHECK_RV(f2->C_Initialize(NULL), CKR_OK, "C_Initialize(NULL)");
	CHECK_RV(f2->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED, "C_Initialize twice");
	CHECK_RV(f2->C_Finalize((void *)1), CKR_ARGUMENTS_BAD, "C_Finalize(non-NULL) initialised");
	CHECK_RV(f2->C_Finalize(NULL), CKR_OK, "C_Finalize");
	CHECK_RV(f2->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED, "C_Finalize twice");

	memset(&a, 0, sizeof a);
	a.flags = CKF_OS_LOCKING_OK;
	CHECK_RV(f2->C_Initialize(&a), CKR_OK, "C_Initialize CKF_OS_LOCKING_OK");
	CHECK_RV(f2->C_Finalize(NULL), CKR_OK, "C_Finalize");

	/* Callbacks without CKF_OS_LOCKING_OK: the module must use them. */
	a.flags = 0;
	a.CreateMutex = app_create;
	a.DestroyMutex = app_destroy;
	a.LockMutex = app_lock;
	a.UnlockMutex = app_unlock;
	CHECK_RV(f2->C_Initialize(&a), CKR_OK, "C_Initialize with callbacks");
	CK_ULONG n = 0;
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK, "C_GetSlotList with callbacks");
	CHECK_RV(f2->C_Finalize(NULL), CKR_OK, "C_Finalize with callbacks");
	check(n_create > 0 && n_create == n_destroy, "callbacks create %d destroy %d", n_create, n_destroy);
	check(n_lock > 0 && n_lock == n_unlock, "callbacks lock %d unlock %d", n_lock, n_unlock);

	/* Callbacks with CKF_OS_LOCKING_OK: either may be used; we use ours. */
	int before = n_create;
	a.flags = CKF_OS_LOCKING_OK;
	CHECK_RV(f2->C_Initialize(&a), CKR_OK, "C_Initialize callbacks + OS locking");
	CHECK_RV(f2->C_Finalize(NULL), CKR_OK, "C_Finalize");
	check(n_create == before, "OS locking preferred");

	/* A failing CreateMutex fails C_Initialize, which leaves nothing. */
	a.flags = 0;
	fail_create = 1;
	CHECK_RV(f2->C_Initialize(&a), CKR_HOST_MEMORY, "C_Initialize CreateMutex fails");
	fail_create = 0;
	CHECK_RV(f2->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED, "not initialised after failure");
}

static void test_info(void)
{
	CK_INFO info;
	CHECK_RV(f2->C_GetInfo(NULL), CKR_ARGUMENTS_BAD, "C_GetInfo(NULL)");
	CHECK_RV(f2->C_GetInfo(&info), CKR_OK, "C_GetInfo");
	check(info.cryptokiVersion.major == 2 && info.cryptokiVersion.minor == 40, "2.40 list says 2.40");
	check(memcmp(info.manufacturerID, "hsmemu                          ", 32) == 0, "manufacturerID");
	check(memcmp(info.libraryDescription, "hsmemu PKCS#11 module           ", 32) == 0,
	      "libraryDescription");
	CHECK_RV(f3->C_GetInfo(&info), CKR_OK, "C_GetInfo 3.0");
	check(info.cryptokiVersion.major == 3 && info.cryptokiVersion.minor == 0, "3.0 list says 3.0");
	CHECK_RV(f32->C_GetInfo(&info), CKR_OK, "C_GetInfo 3.2");
	check(info.cryptokiVersion.major == 3 && info.cryptokiVersion.minor == 2, "3.2 list says 3.2");
	CHECK_RV(f32->C_GetInfo(NULL), CKR_ARGUMENTS_BAD, "C_GetInfo 3.2 (NULL)");
	/* hsmemu runs every call synchronously: no asynchronous operation. */
	CK_ASYNC_DATA ad;
	CK_ULONG id;
	CHECK_RV(f32->C_AsyncComplete(1, (CK_UTF8CHAR_PTR) "C_Sign", &ad), CKR_FUNCTION_NOT_SUPPORTED, "C_AsyncComplete");
	CHECK_RV(f32->C_AsyncGetID(1, (CK_UTF8CHAR_PTR) "C_Sign", &id), CKR_FUNCTION_NOT_SUPPORTED, "C_AsyncGetID");
	CHECK_RV(f32->C_AsyncJoin(1, (CK_UTF8CHAR_PTR) "C_Sign", 1, NULL, 0), CKR_FUNCTION_NOT_SUPPORTED, "C_AsyncJoin");
	/* The 3.2 functions the daemon serves go to it: with none, no session
	 * is valid. */
	CK_FLAGS fl;
	CHECK_RV(f32->C_GetSessionValidationFlags(1, CKS_LAST_VALIDATION_OK, &fl), CKR_SESSION_HANDLE_INVALID,
		 "C_GetSessionValidationFlags");
	CHECK_RV(f32->C_VerifySignature(1, NULL, 0), CKR_SESSION_HANDLE_INVALID, "C_VerifySignature");
	CHECK_RV(f2->C_GetFunctionStatus(1), CKR_FUNCTION_NOT_PARALLEL, "C_GetFunctionStatus");
	CHECK_RV(f2->C_CancelFunction(1), CKR_FUNCTION_NOT_PARALLEL, "C_CancelFunction");
	/* The message-based functions go to the daemon: with none, no session
	 * is valid. */
	CHECK_RV(f3->C_MessageEncryptInit(1, &t_mechanism, 1), CKR_SESSION_HANDLE_INVALID,
		 "C_MessageEncryptInit");
	CHECK_RV(f3->C_VerifyMessage(1, NULL, 0, NULL, 0, NULL, 0), CKR_SESSION_HANDLE_INVALID,
		 "C_VerifyMessage");
	CHECK_RV(f3->C_SignMessageNext(1, NULL, 0, NULL, 0, NULL, NULL), CKR_SESSION_HANDLE_INVALID,
		 "C_SignMessageNext, no length pointer");
}

static void test_offline(void)
{
	CK_SLOT_ID slots[4];
	CK_ULONG n;
	CK_SLOT_INFO si;
	CK_TOKEN_INFO ti;
	CK_SESSION_HANDLE s;

	n = 0;
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK, "slot list size");
	check(n == 1, "one slot, got %lu", n);
	n = 0;
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, slots, &n), CKR_BUFFER_TOO_SMALL, "slot list short");
	check(n == 1, "short slot list reports 1");
	n = 4;
	slots[0] = 99;
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, slots, &n), CKR_OK, "slot list");
	check(n == 1 && slots[0] == 0, "slot list is {0}");
	n = 4;
	CHECK_RV(f2->C_GetSlotList(CK_TRUE, slots, &n), CKR_OK, "slots with a token");
	check(n == 0, "no slot has a token");
	CHECK_RV(f2->C_GetSlotInfo(0, &si), CKR_OK, "slot 0 info");
	check(!(si.flags & CKF_TOKEN_PRESENT), "slot 0 has no token");
	check(si.slotDescription[63] == ' ' && si.manufacturerID[0] == 'h', "slot info padded");
	CHECK_RV(f2->C_GetSlotInfo(1, &si), CKR_SLOT_ID_INVALID, "slot 1 info");
	CHECK_RV(f2->C_GetTokenInfo(0, &ti), CKR_TOKEN_NOT_PRESENT, "token info");
	CHECK_RV(f2->C_OpenSession(0, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_TOKEN_NOT_PRESENT,
		 "open session");
	CHECK_RV(f2->C_CloseSession(1), CKR_SESSION_HANDLE_INVALID, "close session");
	CHECK_RV(f2->C_Login(1, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4), CKR_SESSION_HANDLE_INVALID, "login");
	CHECK_RV(f2->C_WaitForSlotEvent(CKF_DONT_BLOCK, slots, NULL), CKR_NO_EVENT, "wait, not blocking");
	CHECK_RV(f2->C_WaitForSlotEvent(0, slots, NULL), CKR_FUNCTION_NOT_SUPPORTED, "wait, blocking");
	hsm_argcases(f32, 1);
}

/* Arguments checked while encoding, below the generated NULL checks. */
static void test_deep_arguments(void)
{
	CK_OBJECT_HANDLE h;
	CK_ATTRIBUTE bad_value = {CKA_LABEL, NULL, 4};
	CHECK_RV(f2->C_CreateObject(1, &bad_value, 1, &h), CKR_ARGUMENTS_BAD, "attribute NULL value, length 4");
	CHECK_RV(f2->C_CreateObject(1, t_template, 5000, &h), CKR_ARGUMENTS_BAD, "template of 5000");
	CK_ATTRIBUTE nested = {CKA_WRAP_TEMPLATE, t_template, sizeof(CK_ATTRIBUTE) + 1};
	CHECK_RV(f2->C_CreateObject(1, &nested, 1, &h), CKR_ATTRIBUTE_VALUE_INVALID, "nested template size");
	nested.ulValueLen = sizeof(CK_ATTRIBUTE);
	CHECK_RV(f2->C_CreateObject(1, &nested, 1, &h), CKR_SESSION_HANDLE_INVALID, "nested template ok");

	CK_GCM_PARAMS gcm = {t_bytes, 12, 96, NULL, 0, 128};
	CK_MECHANISM m = {CKM_AES_GCM, &gcm, sizeof gcm - 1};
	CHECK_RV(f2->C_EncryptInit(1, &m, 1), CKR_MECHANISM_PARAM_INVALID, "GCM parameter size");
	m.ulParameterLen = sizeof gcm;
	gcm.pIv = NULL;
	CHECK_RV(f2->C_EncryptInit(1, &m, 1), CKR_MECHANISM_PARAM_INVALID, "GCM NULL IV, length 12");
	gcm.pIv = t_bytes;
	CHECK_RV(f2->C_EncryptInit(1, &m, 1), CKR_SESSION_HANDLE_INVALID, "GCM ok");
	CK_MECHANISM nullparam = {CKM_AES_CBC, NULL, 16};
	CHECK_RV(f2->C_EncryptInit(1, &nullparam, 1), CKR_ARGUMENTS_BAD, "mechanism NULL parameter, length 16");
	CK_RSA_PKCS_OAEP_PARAMS oaep = {CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 3};
	CK_RSA_AES_KEY_WRAP_PARAMS raw = {256, &oaep};
	CK_MECHANISM wrap = {CKM_RSA_AES_KEY_WRAP, &raw, sizeof raw};
	CK_ULONG len = sizeof t_out;
	CHECK_RV(f2->C_WrapKey(1, &wrap, 1, 2, t_out, &len), CKR_MECHANISM_PARAM_INVALID,
		 "nested OAEP NULL source, length 3");
	/* The functions the token does not support answer so whatever their
	 * arguments, before anything else. */
	CHECK_RV(f2->C_GetOperationState(1, NULL, NULL), CKR_FUNCTION_NOT_SUPPORTED, "C_GetOperationState, NULL length");
	CHECK_RV(f2->C_SetOperationState(1, NULL, 8, 0, 0), CKR_FUNCTION_NOT_SUPPORTED,
		 "C_SetOperationState, NULL state of 8 bytes");
	CHECK_RV(f2->C_DigestEncryptUpdate(1, NULL, 8, NULL, NULL), CKR_FUNCTION_NOT_SUPPORTED,
		 "C_DigestEncryptUpdate, NULL part and length");
	CHECK_RV(f2->C_DecryptDigestUpdate(1, t_bytes, 8, t_out, NULL), CKR_FUNCTION_NOT_SUPPORTED,
		 "C_DecryptDigestUpdate, NULL length");
	CHECK_RV(f2->C_SignEncryptUpdate(1, t_bytes, 8, NULL, NULL), CKR_FUNCTION_NOT_SUPPORTED,
		 "C_SignEncryptUpdate, NULL length");
	CHECK_RV(f2->C_DecryptVerifyUpdate(1, t_bytes, 8, t_out, &len), CKR_FUNCTION_NOT_SUPPORTED,
		 "C_DecryptVerifyUpdate");

	/* Arguments too long to carry get the call's own code, the one the
	 * daemon gives a request over its bound (calls.TooLarge), never
	 * CKR_ARGUMENTS_BAD: they are well formed. None is read. */
	CK_BYTE big;
	CHECK_RV(f2->C_Encrypt(1, &big, (CK_ULONG)17 << 20, t_out, &len), CKR_DATA_LEN_RANGE, "17 MiB input");
	CHECK_RV(f2->C_Encrypt(1, &big, (CK_ULONG)16 << 20, t_out, &len), CKR_DATA_LEN_RANGE,
		 "16 MiB input, over a frame");
	CHECK_RV(f2->C_Decrypt(1, &big, (CK_ULONG)17 << 20, t_out, &len), CKR_ENCRYPTED_DATA_LEN_RANGE,
		 "17 MiB ciphertext");
	CHECK_RV(f2->C_SignUpdate(1, &big, (CK_ULONG)17 << 20), CKR_DATA_LEN_RANGE, "17 MiB part to sign");
	CHECK_RV(f2->C_DigestUpdate(1, &big, (CK_ULONG)17 << 20), CKR_DEVICE_MEMORY, "17 MiB part to digest");
	CHECK_RV(f2->C_UnwrapKey(1, &m, 1, &big, (CK_ULONG)17 << 20, NULL, 0, &h), CKR_WRAPPED_KEY_LEN_RANGE,
		 "17 MiB wrapped key");
	gcm.pAAD = &big;
	gcm.ulAADLen = (CK_ULONG)17 << 20;
	CHECK_RV(f2->C_EncryptInit(1, &m, 1), CKR_MECHANISM_PARAM_INVALID, "GCM 17 MiB AAD");
	gcm.pAAD = NULL;
	gcm.ulAADLen = 0;
	gcm.pIv = &big;
	gcm.ulIvLen = (CK_ULONG)17 << 20;
	CHECK_RV(f2->C_DecryptInit(1, &m, 1), CKR_MECHANISM_PARAM_INVALID, "GCM 17 MiB IV");
}

struct worker {
	int ok;
};

static void *hammer(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < 200; i++) {
		CK_ULONG n = 0;
		CK_SLOT_INFO si;
		if (f2->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n != 1 ||
		    f2->C_GetSlotInfo(0, &si) != CKR_OK || f2->C_CloseSession(5) != CKR_SESSION_HANDLE_INVALID)
			return NULL;
	}
	w->ok = 1;
	return NULL;
}

static void test_threads(void)
{
	pthread_t t[8];
	struct worker w[8];
	for (int i = 0; i < 8; i++) {
		w[i].ok = 0;
		pthread_create(&t[i], NULL, hammer, &w[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		check(w[i].ok, "thread %d", i);
	}
}

static void test_fork(void)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		int bad = 0;
		CK_ULONG n = 0;
		CK_INFO info;
		bad |= f2->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_CRYPTOKI_NOT_INITIALIZED;
		bad |= (f2->C_GetInfo(&info) != CKR_CRYPTOKI_NOT_INITIALIZED) << 1;
		bad |= (f3->C_CloseSession(1) != CKR_CRYPTOKI_NOT_INITIALIZED) << 2;
		bad |= (f2->C_Initialize(NULL) != CKR_OK) << 3;
		bad |= (f2->C_GetSlotList(CK_FALSE, NULL, &n) != CKR_OK || n != 1) << 4;
		bad |= (f2->C_Initialize(NULL) != CKR_CRYPTOKI_ALREADY_INITIALIZED) << 5;
		bad |= (f2->C_Finalize(NULL) != CKR_OK) << 6;
		_exit(bad);
	}
	int status = 0;
	check(pid > 0 && waitpid(pid, &status, 0) == pid, "fork and wait");
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child: status %d", WEXITSTATUS(status));
	CK_ULONG n = 0;
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK, "parent after fork");

	/* A child that finalises without initialising drops what it inherited. */
	pid = fork();
	if (pid == 0)
		_exit(f2->C_Finalize(NULL) == CKR_CRYPTOKI_NOT_INITIALIZED ? 0 : 1);
	check(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "child C_Finalize");
	CHECK_RV(f2->C_GetSlotList(CK_FALSE, NULL, &n), CKR_OK, "parent after second fork");
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MODULE.so\n", argv[0]);
		return 2;
	}
	/* No daemon: a socket path where nothing listens. */
	setenv("HSMEMU_SOCKET", "/nonexistent/hsmemu-test/hsmemu.sock", 1);
	t_reset();

	int fds0 = fds(), threads0 = threads();
	void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
		return 2;
	}
	check(fds() == fds0 && threads() == threads0, "loading opens nothing and starts nothing");

	test_exports(lib);
	test_lists(lib);
	test_not_initialized();
	test_initialize();

	CHECK_RV(f2->C_Initialize(NULL), CKR_OK, "C_Initialize");
	check(fds() == fds0 && threads() == threads0, "C_Initialize opens nothing and starts nothing");
	test_info();
	test_offline();
	test_deep_arguments();
	test_threads();
	test_fork();
	check(fds() == fds0 && threads() == threads0, "no descriptor or thread left behind");
	CHECK_RV(f2->C_Finalize(NULL), CKR_OK, "C_Finalize");

	dlclose(lib);
	printf("module_test: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
