/*
 * ctest.h: the checks, sections and counts of the C test programs held.c
 * (with heldmsg.c, heldwrap.c, heldlock.c and heldfin.c) and wipe.c. Their output is what
 * cryptoki/e2e/ctest_test.go reads: "FAIL [section] FILE:LINE: ...",
 * "SECTION name" and "SECTION name: N passed, M failed in Ts" around
 * each section, "FAIL: TIMEOUT: a section hangs" from a section that
 * takes longer than CTEST_ALARM seconds, last "e2e: N passed, M failed".
 * The counts are safe to update from several threads.
 */
#ifndef HSMEMU_E2E_CTEST_H
#define HSMEMU_E2E_CTEST_H

#include <p11-kit/pkcs11.h>

#define CTEST_ALARM 60 /* seconds a section may take */

/* The section the checks count in. */
extern const char *section;

/* ---- checks: each counts as passed or failed, in the current section ---- */

void failf(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void pass(void);
int expect_rv(CK_RV got, CK_RV want, const char *call, const char *file, int line);

#define EXPECT(call, want) expect_rv((call), (want), #call, __FILE__, __LINE__)
#define OK(call) EXPECT(call, CKR_OK)
#define CHECK(cond, ...) ((cond) ? (pass(), 1) : (failf(__FILE__, __LINE__, __VA_ARGS__), 0))

/* ctest_start makes stdout line-buffered and a section that hangs end the
 * program; first in main. */
void ctest_start(void);
/* begin and end a section. */
void begin(const char *name);
void end(void);
/* ---- the token ---- */

/* ctest_label writes a token label no other run has: prefix, the
 * process id and the time, padded with spaces. */
void ctest_label(CK_UTF8CHAR label[32], const char *prefix);
/* ctest_slot_of returns the slot whose token has the label (the one a
 * C_InitToken on slot 0 made), or 0, a failed check, when none has. */
CK_SLOT_ID ctest_slot_of(CK_FUNCTION_LIST *f, const CK_UTF8CHAR label[32]);

/* ---- threads ---- */

/* ctest_sleeping_in returns the number of the system call thread tid of
 * this process sleeps in (its /proc syscall file), or -1 while it runs or
 * the file cannot be read. Open and read only, no allocation: the watcher
 * shares no allocator lock with the thread it watches. */
long ctest_sleeping_in(int tid);

/* ctest_done prints the totals and returns the program's exit status: 1
 * when a check failed. */
int ctest_done(void);

#endif
