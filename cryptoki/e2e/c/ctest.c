/*
 * ctest.c: the checks, sections and counts of the C test programs
 * (ctest.h).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ctest.h"

const char *section = "init";

static long passed, failed;
static pthread_mutex_t count_mu = PTHREAD_MUTEX_INITIALIZER;

void failf(const char *file, int line, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&count_mu);
	failed++;
	pthread_mutex_unlock(&count_mu);
	const char *base = strrchr(file, '/');
	printf("FAIL [%s] %s:%d: %s\n", section, base != NULL ? base + 1 : file, line, msg);
}

void pass(void)
{
	pthread_mutex_lock(&count_mu);
	passed++;
	pthread_mutex_unlock(&count_mu);
}

int expect_rv(CK_RV got, CK_RV want, const char *call, const char *file, int line)
{
	if (got == want) {
		pass();
		return 1;
	}
	failf(file, line, "%s: rv 0x%lx, want 0x%lx", call, (unsigned long)got, (unsigned long)want);
	return 0;
}

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "FAIL: TIMEOUT: a section hangs\n";
	ssize_t n = write(STDOUT_FILENO, msg, sizeof msg - 1);
	(void)n;
	_exit(3);
}

void ctest_start(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGALRM, on_alarm);
}

static long sec_passed, sec_failed;
static struct timespec sec_start;

void begin(const char *name)
{
	section = name;
	sec_passed = passed;
	sec_failed = failed;
	clock_gettime(CLOCK_MONOTONIC, &sec_start);
	printf("SECTION %s\n", name);
	alarm(CTEST_ALARM);
}

void end(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	alarm(0);
	printf("SECTION %s: %ld passed, %ld failed in %.2fs\n", section, passed - sec_passed, failed - sec_failed,
	       (double)(t.tv_sec - sec_start.tv_sec) + (double)(t.tv_nsec - sec_start.tv_nsec) / 1e9);
}

void ctest_label(CK_UTF8CHAR label[32], const char *prefix)
{
	char str[33];
	snprintf(str, sizeof str, "%s-%d-%ld", prefix, (int)getpid(), (long)time(NULL));
	memset(label, ' ', 32);
	memcpy(label, str, strlen(str));
}

CK_SLOT_ID ctest_slot_of(CK_FUNCTION_LIST *f, const CK_UTF8CHAR label[32])
{
	CK_SLOT_ID list[64], slot = 0;
	CK_ULONG n = 64;
	CK_TOKEN_INFO ti;
	OK(f->C_GetSlotList(CK_TRUE, list, &n));
	for (CK_ULONG i = 0; i < n; i++)
		if (list[i] != 0 && f->C_GetTokenInfo(list[i], &ti) == CKR_OK && memcmp(ti.label, label, 32) == 0)
			slot = list[i];
	CHECK(slot != 0, "no slot holds the new token");
	return slot;
}

int ctest_done(void)
{
	printf("e2e: %ld passed, %ld failed\n", passed, failed);
	return failed ? 1 : 0;
}

long ctest_sleeping_in(int tid)
{
	char path[64], buf[128];
	snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t k = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (k <= 0)
		return -1;
	buf[k] = '\0';
	if (buf[0] < '0' || buf[0] > '9')
		return -1; /* "running" */
	return strtol(buf, NULL, 10);
}
