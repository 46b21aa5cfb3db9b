#!/bin/sh
# add-system-user.sh [ROOT]: the hsmemu system user and group the systemd
# unit runs the daemon as, on Debian conventions (a system group, a system
# user in it with no login shell and its home the state directory, not
# created here: systemd's StateDirectory= makes it). Members of the group
# may connect to the daemon's socket. If the tss group exists (the TPM
# device /dev/tpmrm0 is root:tss 0660 on Debian), the user joins it.
# ROOT (default /) is where /etc/passwd and /etc/group are: a staged or
# test root. Idempotent: an existing user or group is left as it is.
set -eu
ROOT=${1:-/}
prefix=""
[ "$ROOT" = / ] || prefix="--prefix $ROOT"
has() { grep -q "^$2:" "$ROOT/etc/$1" 2>/dev/null; }

if ! has group hsmemu; then
	# shellcheck disable=SC2086 # $prefix is empty or two words
	groupadd --system $prefix hsmemu
fi
if ! has passwd hsmemu; then
	# shellcheck disable=SC2086
	useradd --system $prefix --gid hsmemu --home-dir /var/lib/hsmemu --no-create-home \
		--shell /usr/sbin/nologin --comment "hsmemu PKCS#11 keystore daemon" hsmemu
fi
if has group tss && ! grep -q "^tss:.*[:,]hsmemu\(,\|$\)" "$ROOT/etc/group"; then
	# shellcheck disable=SC2086
	usermod $prefix --append --groups tss hsmemu
fi
