#!/bin/bash
# peer-tpm2-pkcs11.sh - run tpm2-pkcs11 1.9.0 (Debian bookworm) against swtpm,
# as a PKCS#11 comparison peer.
#
#   peer-tpm2-pkcs11.sh start DIR [--token]   start swtpm + private D-Bus + tpm2-abrmd
#   peer-tpm2-pkcs11.sh env   DIR             print the export lines again
#   peer-tpm2-pkcs11.sh stop  DIR             stop everything started by "start"
#
# "start" leaves an EMPTY store (DIR/store): the only slot (slotID 1) is
# uninitialised (tpm2-pkcs11 always appends one empty slot), and
# C_InitToken / C_InitPIN work through PKCS#11 (`hsmemu bench --setup`).
# With --token it also creates the token "bench" (SO PIN 12345678, user PIN 1234)
# through PKCS#11 and adds an AES-256 key (label aes256, CKA_ID = ASCII "aes1")
# and an HMAC-SHA256 key (label hmac256, CKA_ID = ASCII "hmac1") with tpm2_ptool, because
# tpm2-pkcs11 1.9.0 returns CKR_FUNCTION_NOT_SUPPORTED for C_GenerateKey.
#
# Why tpm2-abrmd: swtpm (libtpms) has only 3 transient-object slots and
# tpm2-pkcs11 keeps every key it uses loaded until logout, so without a
# resource manager the 3rd key in a process fails with TPM_RC_OBJECT_MEMORY
# ("out of memory for object contexts"), and crashed clients leak handles.
# tpm2-abrmd swaps contexts and flushes a client's objects when it disconnects.
#
# Ports: TPM_PORT (default 2321) and TPM_PORT+1 (control channel).
# Packages: swtpm swtpm-tools libtpm2-pkcs11-1 libtss2-tcti-swtpm0 tpm2-abrmd
#           libtss2-tcti-tabrmd0 dbus  (and, for --token: opensc libtpm2-pkcs11-tools tpm2-tools)
set -euo pipefail

MODULE=/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,8p' "$0"; exit 2; }
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
port=${TPM_PORT:-2321}; ctrl=$((port + 1))
[ -f "$dir/ports" ] && read -r port ctrl < "$dir/ports"

print_env() {
    cat <<EOF
export DBUS_SESSION_BUS_ADDRESS='unix:path=$dir/dbus.sock'
export TPM2_PKCS11_TCTI='tabrmd:bus_type=session'
export TPM2TOOLS_TCTI='tabrmd:bus_type=session'
export TPM2_PKCS11_STORE='$dir/store'
export TSS2_LOG='all+NONE'
export TPM2_PKCS11_LOG_LEVEL=0
# PKCS#11 module: $MODULE
EOF
}

running() {   # pid exists and is not a zombie awaiting reaping
    kill -0 "$1" 2>/dev/null && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null
}
alive() { [ -f "$1" ] && running "$(cat "$1")"; }

stop_pidfile() {   # stop_pidfile FILE NAME
    local f=$1 p
    if alive "$f"; then
        p=$(cat "$f"); kill "$p" 2>/dev/null || true
        for _ in $(seq 50); do running "$p" || break; sleep 0.1; done
        if running "$p"; then kill -9 "$p" 2>/dev/null || true; fi
        echo "stopped $2 (pid $p)" >&2
    fi
    rm -f "$f"
}

do_stop() {
    stop_pidfile "$dir/abrmd.pid" tpm2-abrmd
    stop_pidfile "$dir/dbus.pid" dbus-daemon
    if alive "$dir/swtpm.pid"; then
        # orderly shutdown (swtpm saves state and removes its pid file);
        # fall back to SIGTERM/SIGKILL
        local sp; sp=$(cat "$dir/swtpm.pid")
        swtpm_ioctl --tcp "127.0.0.1:$ctrl" -s >/dev/null 2>&1 || true
        for _ in $(seq 30); do [ -f "$dir/swtpm.pid" ] || break; sleep 0.1; done
        [ -f "$dir/swtpm.pid" ] || echo "stopped swtpm (pid $sp)" >&2
    fi
    stop_pidfile "$dir/swtpm.pid" swtpm
    rm -f "$dir/dbus.sock" "$dir/ports"
}

do_start() {
    local with_token=${1:-}
    if alive "$dir/swtpm.pid" || alive "$dir/abrmd.pid"; then
        echo "already running in $dir (use: $0 stop $dir)" >&2; exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port already in use; set TPM_PORT" >&2; exit 1
    fi
    mkdir -p "$dir/tpmstate" "$dir/store"
    echo "$port $ctrl" > "$dir/ports"
    trap 'echo "start failed; cleaning up" >&2; do_stop' ERR

    # 1. software TPM (TCP, TPM2, already powered on + TPM2_Startup(CLEAR))
    swtpm socket --tpm2 --daemon \
        --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
        --ctrl "type=tcp,port=$ctrl,bindaddr=127.0.0.1" \
        --tpmstate "dir=$dir/tpmstate" \
        --flags not-need-init,startup-clear \
        --pid "file=$dir/swtpm.pid" --log "file=$dir/swtpm.log"
    for _ in $(seq 50); do alive "$dir/swtpm.pid" && break; sleep 0.1; done
    alive "$dir/swtpm.pid"

    # 2. private D-Bus session bus for tpm2-abrmd
    dbus-daemon --session --fork --nopidfile --address="unix:path=$dir/dbus.sock" \
        --print-pid=3 3>"$dir/dbus.pid" >/dev/null
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/dbus.sock"

    # 3. resource manager in front of swtpm (the only client of swtpm's port)
    local root=(); [ "$(id -u)" = 0 ] && root=(--allow-root)
    TSS2_LOG=all+NONE setsid tpm2-abrmd --session "${root[@]}" --flush-all \
        --tcti="swtpm:host=127.0.0.1,port=$port" </dev/null >"$dir/abrmd.log" 2>&1 &
    echo $! > "$dir/abrmd.pid"
    # wait until it owns its bus name and answers
    local ok=
    for _ in $(seq 100); do
        if TSS2_LOG=all+NONE TPM2TOOLS_TCTI=tabrmd:bus_type=session \
           tpm2_getrandom 4 >/dev/null 2>&1; then ok=1; break; fi
        alive "$dir/abrmd.pid" || break
        sleep 0.1
    done
    [ -n "$ok" ] || { echo "tpm2-abrmd did not come up:" >&2; cat "$dir/abrmd.log" >&2; false; }

    # 4. optional: token "bench" + secret keys (C_GenerateKey is unsupported)
    if [ "$with_token" = --token ]; then
        eval "$(print_env)"
        pkcs11-tool --module "$MODULE" --init-token --label bench --so-pin 12345678 >/dev/null
        pkcs11-tool --module "$MODULE" --token-label bench --login --login-type so \
            --so-pin 12345678 --init-pin --pin 1234 >/dev/null
        tpm2_ptool addkey --label bench --userpin 1234 --algorithm aes256 \
            --key-label aes256 --id aes1 >/dev/null
        tpm2_ptool addkey --label bench --userpin 1234 --algorithm hmac:sha256 \
            --key-label hmac256 --id hmac1 >/dev/null
        echo "token 'bench' created (SO PIN 12345678, user PIN 1234) with AES-256 + HMAC-SHA256 keys" >&2
    fi
    trap - ERR
    echo "started: swtpm pid $(cat "$dir/swtpm.pid"), dbus pid $(cat "$dir/dbus.pid"), tpm2-abrmd pid $(cat "$dir/abrmd.pid")" >&2
    print_env
}

case "$cmd" in
    start) do_start "${3:-}" ;;
    stop)  do_stop ;;
    env)   print_env ;;
    *)     sed -n '2,8p' "$0"; exit 2 ;;
esac
