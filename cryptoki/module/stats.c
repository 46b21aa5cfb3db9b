/*
 * stats.c: how many PKCS#11 calls an application made that went through a
 * stub, and how many round trips to the daemon they cost, from
 * C_Initialize to C_Finalize. A round trip is one write of frames and the
 * read of their replies (exchange.c), however many frames travel
 * together; those that went through shared-memory rings (ring.c) are
 * counted again apart. With HSMEMU_MODULE_STATS set at C_Initialize, C_Finalize
 * reports them: "-" on stderr, anything else appended to the file it
 * names. Two relaxed atomic adds per call; nothing else is kept.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hsm.h"

static unsigned long calls, trips, ring_trips;
static char where[256]; /* empty: no report */

void hsm_stats_init(void)
{
	__atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&trips, 0, __ATOMIC_RELAXED);
	__atomic_store_n(&ring_trips, 0, __ATOMIC_RELAXED);
	const char *v = getenv("HSMEMU_MODULE_STATS");
	where[0] = '\0';
	if (v != NULL && strlen(v) < sizeof where)
		strcpy(where, v);
}

void hsm_stats_call(void) { __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED); }

void hsm_stats_trip(int ring)
{
	__atomic_add_fetch(&trips, 1, __ATOMIC_RELAXED);
	if (ring)
		__atomic_add_fetch(&ring_trips, 1, __ATOMIC_RELAXED);
}

void hsm_stats_report(void)
{
	if (where[0] == '\0')
		return;
	char line[128];
	int n = snprintf(line, sizeof line, "hsmemu-pkcs11: pid %ld: %lu calls, %lu round trips, %lu through rings\n",
			 (long)getpid(), __atomic_load_n(&calls, __ATOMIC_RELAXED), __atomic_load_n(&trips, __ATOMIC_RELAXED),
			 __atomic_load_n(&ring_trips, __ATOMIC_RELAXED));
	if (n <= 0 || (size_t)n >= sizeof line)
		return;
	int fd = strcmp(where, "-") == 0 ? dup(2) : open(where, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return;
	/* One write, so lines from several processes do not interleave. */
	ssize_t w = write(fd, line, (size_t)n);
	(void)w;
	close(fd);
}
