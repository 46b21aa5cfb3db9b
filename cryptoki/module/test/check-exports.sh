#!/bin/sh
# check-exports.sh MODULE.so: the module's dynamic symbol table defines
# exactly C_GetFunctionList, C_GetInterfaceList and C_GetInterface.
set -eu
want="C_GetFunctionList
C_GetInterface
C_GetInterfaceList"
got=$(nm -D --defined-only "$1" | awk '{print $3}' | sort)
if [ "$got" != "$want" ]; then
	echo "check-exports: $1 exports:" >&2
	echo "$got" >&2
	echo "want exactly:" >&2
	echo "$want" >&2
	exit 1
fi
echo "check-exports: $1 exports exactly the three PKCS#11 entry points"
