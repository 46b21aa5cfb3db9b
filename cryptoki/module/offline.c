/*
 * offline.c: what the module answers while no daemon answers its dial
 * (docs/protocol.md, "When the daemon is not there"). The application sees
 * one slot, id 0, whose token is absent, so that p11-kit, NSS and GnuTLS,
 * which load every registered module at start, carry on.
 */
#include <string.h>

#include "hsm.h"

CK_RV hsm_offline_slot_list(CK_BBOOL token_present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	CK_ULONG n = token_present ? 0 : 1;
	if (list == NULL) {
		*count = n;
		return CKR_OK;
	}
	if (*count < n) {
		*count = n;
		return CKR_BUFFER_TOO_SMALL;
	}
	if (n == 1)
		list[0] = 0;
	*count = n;
	return CKR_OK;
}

static void pad(CK_UTF8CHAR *dst, size_t n, const char *s)
{
	size_t k = strlen(s);
	memset(dst, ' ', n);
	memcpy(dst, s, k < n ? k : n);
}

CK_RV hsm_offline_slot_info(CK_SLOT_ID slot, CK_SLOT_INFO *info)
{
	if (slot != 0)
		return CKR_SLOT_ID_INVALID;
	memset(info, 0, sizeof *info);
	pad(info->slotDescription, sizeof info->slotDescription, "hsmemu (daemon not running)");
	pad(info->manufacturerID, sizeof info->manufacturerID, "hsmemu");
	info->flags = CKF_REMOVABLE_DEVICE; /* no CKF_TOKEN_PRESENT */
	return CKR_OK;
}

CK_RV hsm_offline_slot(CK_SLOT_ID slot)
{
	return slot == 0 ? CKR_TOKEN_NOT_PRESENT : CKR_SLOT_ID_INVALID;
}

CK_RV hsm_offline_wait(CK_FLAGS flags)
{
	/* Waiting for a daemon that is not there would block the caller
	 * forever: only the non-blocking form is served. */
	return (flags & CKF_DONT_BLOCK) ? CKR_NO_EVENT : CKR_FUNCTION_NOT_SUPPORTED;
}
