/*
 * heldlock.c: the "fulltable" and "forklock" sections of e2e-held
 * (held.c), on the module's locks.
 *
 * fulltable: a result handed over owes the daemon a C_SessionCancel,
 * which the module keeps for the session's next frame in a table of 128
 * sessions (defer.c). Once every entry holds one, a follow-up must still
 * send nothing under the lock that every call takes (held.c's): a slow
 * daemon would stall every thread of the application.
 *
 * The section fills the table (FILL sessions, more than it holds, each
 * with a cancel owed), leaves a length query's result held on two more
 * sessions, X and Y, and stops the daemon (SIGSTOP: its process is the
 * socket's peer; every thread of it stopped, in /proc, before going on).
 * Thread A then makes X's follow-up. Once A waits in a read for the
 * stopped daemon, it must hold none of the module's locks: the module is
 * initialised with the application's mutex callbacks (no
 * CKF_OS_LOCKING_OK), which count the locks A holds. And thread B's
 * length query on Y, which the module answers from the held result
 * without the daemon, completes while A still waits. Nothing is timed:
 * the daemon is stopped, and the calls wait for it without a deadline
 * (timeout = 0 in the module's configuration).
 *
 * The daemon goes on (SIGCONT), A's follow-up gets the digest, and the
 * sessions' operations are where PKCS#11 says: X's is over, and a new
 * Init on a session that owes a cancel is accepted.
 *
 * The section speaks the socket transport: with rings, a call waits on a
 * futex, as a thread that waits for a lock does, so "waits for the
 * daemon" could not be told from "waits for a lock" by its system call.
 *
 * forklock: fork() waits for a thread inside one of the module's locks,
 * so that the child never inherits a table half changed (test_forklock).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "held.h"

#define FILL 160 /* sessions that owe a cancel: more than defer.c's 128 */

/* ---- the application's mutexes, which count what a thread holds ---- */

/* The count of the thread watched (A); NULL on the others. */
static __thread int *my_locks;
static int a_locks;
/* forklock: the thread that pauses inside the first lock its call takes,
 * and the one that notes a lock it has to wait for. */
static __thread int pause_inside, note_wait;
static int paused, released, waited;

static CK_RV create_mutex(void **m)
{
	pthread_mutex_t *p = malloc(sizeof *p);
	if (p == NULL)
		return CKR_HOST_MEMORY;
	pthread_mutex_init(p, NULL);
	*m = p;
	return CKR_OK;
}

static CK_RV destroy_mutex(void *m)
{
	pthread_mutex_destroy(m);
	free(m);
	return CKR_OK;
}

static void pause_briefly(void);

static CK_RV lock_mutex(void *m)
{
	if (note_wait && pthread_mutex_trylock(m) == 0) {
		/* free: taken */
	} else {
		if (note_wait)
			__atomic_store_n(&waited, 1, __ATOMIC_SEQ_CST);
		pthread_mutex_lock(m);
	}
	if (my_locks != NULL)
		__atomic_add_fetch(my_locks, 1, __ATOMIC_SEQ_CST);
	if (pause_inside) {
		pause_inside = 0;
		__atomic_store_n(&paused, 1, __ATOMIC_SEQ_CST);
		while (!__atomic_load_n(&released, __ATOMIC_SEQ_CST))
			pause_briefly();
	}
	return CKR_OK;
}

static CK_RV unlock_mutex(void *m)
{
	if (my_locks != NULL)
		__atomic_sub_fetch(my_locks, 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(m);
	return CKR_OK;
}

/* ---- the daemon and the threads, seen from outside ---- */

/* daemon_pid is the process behind HSMEMU_SOCKET (its peer credentials);
 * 0 when there is none. */
static pid_t daemon_pid(void)
{
	const char *path = getenv("HSMEMU_SOCKET");
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	if (path == NULL || strlen(path) >= sizeof a.sun_path)
		return 0;
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct ucred cred = {0};
	socklen_t n = sizeof cred;
	pid_t pid = 0;
	if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &n) == 0)
		pid = cred.pid;
	close(fd);
	return pid;
}

/* in_read says whether thread tid is blocked in a system call that
 * waits for a socket. */
static int in_read(pid_t tid)
{
	long nr = ctest_sleeping_in((int)tid);
	return nr == SYS_read || nr == SYS_recvfrom || nr == SYS_recvmsg || nr == SYS_ppoll ||
#ifdef SYS_poll
	       nr == SYS_poll ||
#endif
	       nr == SYS_pselect6;
}

/* all_stopped says whether every thread of process pid is stopped: a
 * SIGSTOP stops them as each comes to it, after kill() returned. */
static int all_stopped(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
	DIR *dir = opendir(path);
	if (dir == NULL)
		return 0;
	int n = 0, stopped = 0;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		char stat[320], buf[512];
		snprintf(stat, sizeof stat, "/proc/%d/task/%s/stat", (int)pid, de->d_name);
		int fd = open(stat, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t k = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (k <= 0)
			continue;
		buf[k] = '\0';
		/* "tid (comm) S ...": the state follows the last ')'. */
		char *p = strrchr(buf, ')');
		n++;
		if (p != NULL && p[1] == ' ' && (p[2] == 'T' || p[2] == 't'))
			stopped++;
	}
	closedir(dir);
	return n > 0 && stopped == n;
}

static void pause_briefly(void)
{
	struct timespec ts = {0, 1000 * 1000};
	nanosleep(&ts, NULL);
}

/* ---- the threads ---- */

static CK_SESSION_HANDLE x, y;
static CK_BYTE a_out[64];
static CK_ULONG a_len;
static CK_RV a_rv;
static pid_t a_tid;
static int a_done;

static void *follow_up(void *arg)
{
	(void)arg;
	my_locks = &a_locks;
	__atomic_store_n(&a_tid, (pid_t)syscall(SYS_gettid), __ATOMIC_SEQ_CST);
	a_len = sizeof a_out;
	a_rv = f->C_Digest(x, msg, sizeof msg, a_out, &a_len);
	my_locks = NULL;
	__atomic_store_n(&a_done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static CK_ULONG b_len;
static CK_RV b_rv;

static void *query(void *arg)
{
	(void)arg;
	b_len = 0;
	b_rv = f->C_Digest(y, msg, sizeof msg, NULL, &b_len);
	return NULL;
}

/* ---- the section ---- */

static CK_MECHANISM sha = {CKM_SHA256, NULL, 0};

/* held_query opens a session and leaves its digest's length query held. */
static int held_query(CK_SESSION_HANDLE *s)
{
	CK_ULONG len = 0;
	return OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, s)) && OK(f->C_DigestInit(*s, &sha)) &&
	       OK(f->C_Digest(*s, msg, sizeof msg, NULL, &len)) && CHECK(len == 32, "length %lu", (unsigned long)len);
}

/* config writes a module configuration whose calls wait for the daemon
 * without a deadline, and names it in HSMEMU_CONFIG. */
static int config(char *path, size_t n)
{
	snprintf(path, n, "%s/hsmemu-heldlock-%d.conf", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
	FILE *fp = fopen(path, "w");
	if (fp == NULL)
		return 0;
	fputs("timeout = 0\n", fp);
	fclose(fp);
	setenv("HSMEMU_CONFIG", path, 1);
	return 1;
}

void test_fulltable(void)
{
	begin("fulltable");
	char conf[256] = "";
	char *transport = getenv("HSMEMU_TRANSPORT") ? strdup(getenv("HSMEMU_TRANSPORT")) : NULL;
	setenv("HSMEMU_TRANSPORT", "socket", 1);
	pid_t pid = daemon_pid();
	CK_C_INITIALIZE_ARGS ia = {.CreateMutex = create_mutex,
				   .DestroyMutex = destroy_mutex,
				   .LockMutex = lock_mutex,
				   .UnlockMutex = unlock_mutex};
	if (!CHECK(pid > 0, "no daemon behind HSMEMU_SOCKET") || !CHECK(config(conf, sizeof conf), "no config") ||
	    !OK(f->C_Initialize(&ia)))
		goto out;

	/* What the digest of msg is, in one call. */
	CK_SESSION_HANDLE s[FILL];
	CK_BYTE want[32], got[32];
	CK_ULONG len = sizeof want;
	if (!OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s[0])) || !OK(f->C_DigestInit(s[0], &sha)) ||
	    !OK(f->C_Digest(s[0], msg, sizeof msg, want, &len)))
		goto fin;
	OK(f->C_CloseSession(s[0]));

	/* The table fills: each session's follow-up takes its held result
	 * and owes the daemon the end of the operation. */
	int filled = 0;
	for (; filled < FILL; filled++) {
		len = sizeof got;
		if (!held_query(&s[filled]) || !OK(f->C_Digest(s[filled], msg, sizeof msg, got, &len)) ||
		    !CHECK(len == 32 && memcmp(got, want, 32) == 0, "session %d: another digest", filled))
			break;
	}
	if (filled < FILL || !held_query(&x) || !held_query(&y))
		goto fin;

	/* The daemon stops. A's follow-up waits for it. */
	if (!CHECK(kill(pid, SIGSTOP) == 0, "SIGSTOP %d", (int)pid))
		goto fin;
	while (!all_stopped(pid))
		pause_briefly();
	int stopped = 1;
	pthread_t a, b;
	pthread_create(&a, NULL, follow_up, NULL);
	while (!__atomic_load_n(&a_done, __ATOMIC_SEQ_CST) &&
	       (__atomic_load_n(&a_tid, __ATOMIC_SEQ_CST) == 0 || !in_read(__atomic_load_n(&a_tid, __ATOMIC_SEQ_CST))))
		pause_briefly();
	CHECK(!__atomic_load_n(&a_done, __ATOMIC_SEQ_CST), "the follow-up returned with the daemon stopped");
	int locks = __atomic_load_n(&a_locks, __ATOMIC_SEQ_CST);
	if (!CHECK(locks == 0, "the follow-up waits for the stopped daemon holding %d of the module's locks", locks)) {
		/* B would wait for A's lock: the daemon goes on first. */
		kill(pid, SIGCONT);
		stopped = 0;
	}
	/* B's length query needs no daemon: it completes while A waits. */
	pthread_create(&b, NULL, query, NULL);
	pthread_join(b, NULL);
	EXPECT(b_rv, CKR_OK);
	CHECK(b_len == 32, "length %lu", (unsigned long)b_len);
	if (stopped)
		CHECK(!__atomic_load_n(&a_done, __ATOMIC_SEQ_CST), "the follow-up returned with the daemon stopped");
	if (stopped)
		kill(pid, SIGCONT);
	pthread_join(a, NULL);
	EXPECT(a_rv, CKR_OK);
	CHECK(a_len == 32 && memcmp(a_out, want, 32) == 0, "the follow-up's digest is another");

	/* X's operation is over; Y's follow-up gets its digest; a session
	 * that owes a cancel starts a new operation. */
	len = sizeof got;
	EXPECT(f->C_Digest(x, msg, sizeof msg, got, &len), CKR_OPERATION_NOT_INITIALIZED);
	OK(f->C_DigestInit(x, &sha));
	len = sizeof got;
	OK(f->C_Digest(y, msg, sizeof msg, got, &len));
	CHECK(len == 32 && memcmp(got, want, 32) == 0, "Y's digest is another");
	len = sizeof got;
	EXPECT(f->C_Digest(y, msg, sizeof msg, got, &len), CKR_OPERATION_NOT_INITIALIZED);
	for (int i = 0; i < FILL; i += FILL / 4) {
		len = sizeof got;
		OK(f->C_DigestInit(s[i], &sha));
		OK(f->C_Digest(s[i], msg, sizeof msg, got, &len));
		CHECK(len == 32 && memcmp(got, want, 32) == 0, "session %d: another digest", i);
	}
fin:
	OK(f->C_Finalize(NULL));
out:
	unsetenv("HSMEMU_CONFIG");
	if (conf[0] != '\0')
		unlink(conf);
	if (transport != NULL)
		setenv("HSMEMU_TRANSPORT", transport, 1);
	else
		unsetenv("HSMEMU_TRANSPORT");
	free(transport);
	end();
}

/* ---- forklock: fork() waits for a thread inside the module's lock ---- */

static CK_SESSION_HANDLE fs;
static CK_RV inside_rv;
static CK_C_INITIALIZE_ARGS fork_ia = {.CreateMutex = create_mutex,
				       .DestroyMutex = destroy_mutex,
				       .LockMutex = lock_mutex,
				       .UnlockMutex = unlock_mutex};

static void *inside(void *arg)
{
	(void)arg;
	CK_ULONG len = 0;
	pause_inside = 1;
	inside_rv = f->C_Digest(fs, msg, sizeof msg, NULL, &len);
	return NULL;
}

static pid_t child;
static int forked;

static void *forker(void *arg)
{
	(void)arg;
	note_wait = 1;
	child = fork();
	if (child == 0) {
		/* The child's own initialisation frees what it inherited. */
		int ok = f->C_Initialize(&fork_ia) == CKR_OK && f->C_Finalize(NULL) == CKR_OK;
		_exit(ok ? 0 : 1);
	}
	note_wait = 0;
	__atomic_store_n(&forked, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* test_forklock: a thread pauses inside the first of the module's locks
 * its call takes (the application's LockMutex callback holds it there);
 * another forks meanwhile. The fork must wait for it (the prepare
 * handler takes the module's locks): a child that inherits a table in
 * the middle of a change frees what the parent had freed already. */
void test_forklock(void)
{
	begin("forklock");
	CK_MECHANISM sha = {CKM_SHA256, NULL, 0};
	if (!OK(f->C_Initialize(&fork_ia)))
		goto out;
	if (!OK(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &fs)) || !OK(f->C_DigestInit(fs, &sha)))
		goto fin;
	pthread_t a, b;
	pthread_create(&a, NULL, inside, NULL);
	while (!__atomic_load_n(&paused, __ATOMIC_SEQ_CST))
		pause_briefly();
	pthread_create(&b, NULL, forker, NULL);
	while (!__atomic_load_n(&waited, __ATOMIC_SEQ_CST) && !__atomic_load_n(&forked, __ATOMIC_SEQ_CST))
		pause_briefly();
	CHECK(!__atomic_load_n(&forked, __ATOMIC_SEQ_CST), "fork() went on while a thread was inside the module's lock");
	__atomic_store_n(&released, 1, __ATOMIC_SEQ_CST);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	EXPECT(inside_rv, CKR_OK);
	int status = 0;
	if (CHECK(child > 0, "fork failed") && CHECK(waitpid(child, &status, 0) == child, "waitpid"))
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's C_Initialize and C_Finalize: status %d",
		      status);
fin:
	OK(f->C_Finalize(NULL));
out:
	end();
}
