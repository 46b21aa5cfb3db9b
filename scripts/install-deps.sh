#!/usr/bin/env bash
# Installs the Debian packages hsmemu's build and tests need, when missing.
# Usage: scripts/install-deps.sh [build|test]
set -euo pipefail

build_pkgs=(gcc make libc6-dev pkg-config libp11-kit-dev libssl-dev)
test_pkgs=(swtpm swtpm-tools opensc gnutls-bin openssl libengine-pkcs11-openssl p11-kit openssh-client softhsm2 python3-cryptography-vectors
	openjdk-17-jdk-headless libnss3-tools p11-kit-modules zsh fish postgresql)

want=("${build_pkgs[@]}")
if [ "${1:-test}" = test ]; then
	want+=("${test_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
