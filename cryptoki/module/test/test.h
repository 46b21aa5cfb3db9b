/*
 * test.h: what the module's C tests share with the argument cases that
 * cmd/p11gen generates (build/p11/argcases.c).
 */
#ifndef HSMEMU_TEST_H
#define HSMEMU_TEST_H

#include "p11compat.h"

/* Fixtures: valid buffers every generated case may pass. */
extern CK_BYTE t_bytes[64];
extern CK_UTF8CHAR t_label[32];
extern CK_ATTRIBUTE t_template[1];
extern CK_MECHANISM t_mechanism;
extern CK_ULONG t_ulong;
extern CK_BYTE t_out[64];
extern CK_ULONG t_out_len;
extern CK_ULONG t_list[8];
extern CK_ULONG t_list_count;

/* t_reset restores the fixtures before each case. */
void t_reset(void);

/* argcase_expect records one case's outcome. */
void argcase_expect(CK_RV got, CK_RV want, const char *what);

/* hsm_argcases runs every forwarded call (generated). */
void hsm_argcases(CK_FUNCTION_LIST_3_2 *f, int phase);

#endif
