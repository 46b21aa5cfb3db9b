#!/bin/sh
# check-layers.sh [MODULE_DIR]: the files on the way to the daemon call only
# down, tls.c < ring.c < conn.c < pool.c < exchange.c < defer.c < held.c < call.c (hsm.h). Each is
# compiled alone; no file may name a symbol that a file above it defines.
# The pool's fresh hook is a pointer to a static function, so it names none.
set -eu
dir=${1:-$(dirname "$0")/..}
layers="tls ring conn pool exchange defer held call"
cc=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for f in $layers; do
	# shellcheck disable=SC2046
	"$cc" -std=gnu11 -c $(pkg-config --cflags p11-kit-1) -I"$dir" -o "$tmp/$f.o" "$dir/$f.c"
	nm -g --defined-only "$tmp/$f.o" | awk '{print $3}' | sort >"$tmp/$f.def"
	nm -u "$tmp/$f.o" | awk '{print $2}' | sort >"$tmp/$f.use"
done

bad=0
for f in $layers; do
	above=""
	seen=0
	for g in $layers; do
		[ "$seen" = 1 ] && above="$above $g"
		[ "$g" = "$f" ] && seen=1
	done
	for g in $above; do
		up=$(comm -12 "$tmp/$f.use" "$tmp/$g.def")
		if [ -n "$up" ]; then
			echo "check-layers: $f.c calls up into $g.c:" $up >&2
			bad=1
		fi
	done
done
[ "$bad" = 0 ] || exit 1
echo "check-layers: $(echo $layers | sed 's/ / < /g'): each file calls only down"
