# hsmemu build. `make run` and `make test` work on a fresh Debian machine:
# each installs the Debian packages it needs first.

GO      ?= go
BIN     := bin
GOFLAGS ?=
export CGO_ENABLED := 1

.PHONY: all build deps test-deps test test-postgres vet race fuzz fuzz-short fuzz-module-short bench run clean module test-module e2e-programs install test-chaos soak

all: build

# The version (git describe) and the commit are stamped into the binary;
# `hsmemu version` and `hsmemu status` report them. Override with
# VERSION=... COMMIT=... where there is no git checkout (a source tarball).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$c || echo $$c-dirty; })
LDFLAGS := -X hsmemu/daemon/adminapi.version=$(VERSION) -X hsmemu/daemon/adminapi.commit=$(COMMIT)

build: deps module e2e-programs
	$(GO) build $(GOFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN)/hsmemu ./cmd/hsmemu
	@mkdir -p build/man
	$(BIN)/hsmemu man > build/man/hsmemu.1

# ---- The PKCS#11 module (cryptoki/module) ----
# cmd/p11gen writes the stubs, function lists and codecs from the call table
# (cryptoki/calls) into $(GEN); they are rebuilt when the table or the
# generator changes, and never committed.
CC      ?= gcc
GEN     := build/p11
P11_CFLAGS = $(shell pkg-config --cflags p11-kit-1)
MODULE_CFLAGS = -std=gnu11 -Wall -Wextra -Werror -fPIC -shared -pthread -fvisibility=hidden \
	$(P11_CFLAGS) -Icryptoki/module -I$(GEN)
# Remote daemons are reached over TLS through the system's libssl (tls.c).
MODULE_LIBS = $(shell pkg-config --libs libssl libcrypto)
MODULE_SRC := $(wildcard cryptoki/module/*.c)
MODULE_HDR := $(wildcard cryptoki/module/*.h)
GEN_SRC    := $(GEN)/stubs.c $(GEN)/codec.c $(GEN)/lists.c
P11GEN_SRC := $(wildcard cmd/p11gen/*.go cryptoki/calls/*.go)
ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

module: $(BIN)/hsmemu-pkcs11.so

$(GEN)/.stamp: $(P11GEN_SRC)
	$(GO) run $(GOFLAGS) ./cmd/p11gen -o $(GEN)
	@touch $@

$(BIN)/hsmemu-pkcs11.so: $(MODULE_SRC) $(MODULE_HDR) $(GEN)/.stamp
	@mkdir -p $(BIN)
	$(CC) $(MODULE_CFLAGS) -O2 -o $@ $(MODULE_SRC) $(GEN_SRC) $(MODULE_LIBS)

$(BIN)/hsmemu-pkcs11-asan.so: $(MODULE_SRC) $(MODULE_HDR) $(GEN)/.stamp
	@mkdir -p $(BIN)
	$(CC) $(MODULE_CFLAGS) -O1 -g $(ASAN_FLAGS) -o $@ $(MODULE_SRC) $(GEN_SRC) $(MODULE_LIBS)

# The C tests need no daemon. The ASan/UBSan test program is built with the
# sanitizers too, so it loads the sanitized module without LD_PRELOAD.
TEST_CFLAGS = -std=gnu11 -Wall -Wextra -Werror -pthread $(P11_CFLAGS) -Icryptoki/module \
	-Icryptoki/module/test -I$(GEN)
TEST_SRC := cryptoki/module/test/module_test.c $(GEN)/argcases.c

build/module-test: $(TEST_SRC) cryptoki/module/test/test.h $(MODULE_HDR) $(GEN)/.stamp
	$(CC) $(TEST_CFLAGS) -O1 -g -o $@ $(TEST_SRC) -ldl

build/module-test-asan: $(TEST_SRC) cryptoki/module/test/test.h $(MODULE_HDR) $(GEN)/.stamp
	$(CC) $(TEST_CFLAGS) -O1 -g $(ASAN_FLAGS) -o $@ $(TEST_SRC) -ldl

test-module: $(BIN)/hsmemu-pkcs11.so $(BIN)/hsmemu-pkcs11-asan.so build/module-test build/module-test-asan
	@cryptoki/module/test/check-exports.sh $(BIN)/hsmemu-pkcs11.so
	@cryptoki/module/test/check-exports.sh $(BIN)/hsmemu-pkcs11-asan.so
	@cryptoki/module/test/check-layers.sh
	build/module-test $(BIN)/hsmemu-pkcs11.so
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		build/module-test-asan $(BIN)/hsmemu-pkcs11-asan.so

# The module against a hostile daemon (test/fuzz_module.c): the module's
# sources linked into the harness with ASan/UBSan, under libFuzzer where
# clang is installed (Debian: clang-14 libclang-rt-14-dev), else built by
# $(CC) with the harness's own deterministic mutation loop. The short run
# ends at a count of inputs or after some seconds, whichever comes first
# (an input whose ring a reply left short waits out the module's timeout,
# a second here). The corpus it grows stays in build/, from the seeds in
# test/fuzz-seeds (replies that take the calls through to their results).
FUZZ_MODULE_CLANG := $(shell command -v clang-14 2>/dev/null || command -v clang 2>/dev/null)
FUZZ_MODULE_RUNS ?= 10000
FUZZ_MODULE_TIME ?= 30
FUZZ_MODULE_CORPUS := build/fuzz-module-corpus
FUZZ_MODULE_FLAGS := -std=gnu11 -Wall -Wextra -Werror -pthread -g -O1 -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined $(P11_CFLAGS) -Icryptoki/module -I$(GEN)
FUZZ_MODULE_SRC := cryptoki/module/test/fuzz_module.c $(MODULE_SRC) $(GEN_SRC)

build/fuzz-module: cryptoki/module/test/fuzz_module.c $(MODULE_SRC) $(MODULE_HDR) $(GEN)/.stamp
	@mkdir -p build
ifneq ($(FUZZ_MODULE_CLANG),)
	$(FUZZ_MODULE_CLANG) $(FUZZ_MODULE_FLAGS) -fsanitize=fuzzer,address,undefined -o $@ $(FUZZ_MODULE_SRC) $(MODULE_LIBS)
else
	$(CC) $(FUZZ_MODULE_FLAGS) -DFUZZ_DRIVER -fsanitize=address,undefined -o $@ $(FUZZ_MODULE_SRC) $(MODULE_LIBS)
endif

fuzz-module-short: build/fuzz-module
	@mkdir -p $(FUZZ_MODULE_CORPUS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		build/fuzz-module -runs=$(FUZZ_MODULE_RUNS) -max_total_time=$(FUZZ_MODULE_TIME) -seed=1 -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=256 \
		-use_value_profile=1 -max_len=4096 -artifact_prefix=build/fuzz-module- $(FUZZ_MODULE_CORPUS) \
		cryptoki/module/test/fuzz-seeds

# ---- The end-to-end C program (cryptoki/e2e/c) ----
# It loads the module and talks to a real daemon that cryptoki/e2e's Go
# tests start (ctest_test.go), so it is built here and run by `go test`.
# Like build/module-test-asan, the copy that loads the ASan/UBSan module is
# built with the sanitizers itself.
E2E_CFLAGS = -std=gnu11 -Wall -Wextra -Werror -pthread $(P11_CFLAGS)

e2e-programs: build/e2e build/e2e-asan build/e2e-held build/e2e-held-asan build/e2e-wipe build/e2e-wipe-asan \
	build/signloop $(BIN)/hsmemu-pkcs11-asan.so

build/e2e: cryptoki/e2e/c/e2e.c
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -O1 -g -o $@ $< -ldl

build/signloop: cryptoki/e2e/c/signloop.c
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -O1 -g -o $@ $< -ldl

build/e2e-asan: cryptoki/e2e/c/e2e.c
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -O1 -g $(ASAN_FLAGS) -o $@ $< -ldl

# held.c and wipe.c count their checks and sections with ctest.c.
CTEST_SRC := cryptoki/e2e/c/ctest.c
CTEST_DEPS := $(CTEST_SRC) cryptoki/e2e/c/ctest.h

# held.c's message sections are in heldmsg.c, its authenticated wrap's in
# heldwrap.c, its full table of owed cancels' in heldlock.c, its
# C_WaitForSlotEvent overtaken by C_Finalize in heldfin.c; all take the
# PKCS#11 3.0 and 3.2 declarations from the module's p11compat.h.
HELD_SRC := cryptoki/e2e/c/held.c cryptoki/e2e/c/heldmsg.c cryptoki/e2e/c/heldwrap.c cryptoki/e2e/c/heldlock.c \
	cryptoki/e2e/c/heldfin.c $(CTEST_SRC)

build/e2e-held: $(HELD_SRC) $(CTEST_DEPS) cryptoki/e2e/c/held.h cryptoki/module/p11compat.h
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -Icryptoki/module -O1 -g -o $@ $(HELD_SRC) -ldl

build/e2e-held-asan: $(HELD_SRC) $(CTEST_DEPS) cryptoki/e2e/c/held.h cryptoki/module/p11compat.h
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -Icryptoki/module -O1 -g $(ASAN_FLAGS) -o $@ $(HELD_SRC) -ldl

# wipe.c: no secret that went through the module left in the memory a
# core dump holds (cryptoki/e2e/wipe_test.go).
build/e2e-wipe: cryptoki/e2e/c/wipe.c $(CTEST_DEPS)
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -O1 -g -o $@ cryptoki/e2e/c/wipe.c $(CTEST_SRC) -ldl

build/e2e-wipe-asan: cryptoki/e2e/c/wipe.c $(CTEST_DEPS)
	@mkdir -p build
	$(CC) $(E2E_CFLAGS) -O1 -g $(ASAN_FLAGS) -o $@ cryptoki/e2e/c/wipe.c $(CTEST_SRC) -ldl

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

vet:
	$(GO) vet ./...

# Every test, with the race detector, against real swtpm instances that the
# tests start and stop themselves; and the module's C tests.
test: test-deps build vet test-module
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) test -race -timeout 15m ./...
	@$(MAKE) --no-print-directory fuzz-short

# The keystore's tests once more, against PostgreSQL: the same tests, on
# a server they start (initdb in a temporary directory, as the postgres
# user under root), one database per keystore. `make test` runs them on
# SQLite, and the daemon's --db scripts on PostgreSQL; this is the rest of
# the matrix (about three minutes).
test-postgres: test-deps
	HSMEMU_TEST_DB=postgres $(GO) test -race -count=1 -timeout 20m ./keystore/

# The built daemon under failure and load (daemon/chaos): SIGKILLed every
# few seconds while eight clients write, its filesystem full, its swtpm
# killed, 10,000 sessions and 1,000 connections. CI runs it after `make
# test` with 30 kills (about two minutes); CHAOS_KILLS=200 is the full
# run (about ten). `go test ./...` skips these tests.
CHAOS_KILLS ?= 30
test-chaos: test-deps build
	HSMEMU_CHAOS=1 HSMEMU_CHAOS_KILLS=$(CHAOS_KILLS) $(GO) test -count=1 -timeout 60m -v ./daemon/chaos/

# Mixed load on the built daemon for SOAK (default 30m), its VmRSS read
# every 10 s; not run in CI. The readings go to SOAK_OUT too.
SOAK     ?= 30m
SOAK_OUT ?= build/soak.txt
soak: test-deps build
	@mkdir -p $(dir $(SOAK_OUT))
	HSMEMU_CHAOS=1 HSMEMU_SOAK=$(SOAK) HSMEMU_SOAK_OUT=$(abspath $(SOAK_OUT)) $(GO) test -count=1 -timeout 24h -v -run '^TestSoak$$' ./daemon/chaos/

# The decoders and the attribute rules face the socket: fuzz them a little
# on every run (longer: FUZZTIME=10m make fuzz). The budget is a count of
# inputs, not a duration: with a duration, Go 1.26's fuzzing coordinator
# can report its own deadline as a failure of the target (go.dev/issue/75804,
# fixed in Go 1.27), on a busy machine. 200,000 inputs take 3 to 15 s here.
FUZZ_SHORT ?= 200000x
# Through a TLS handshake and a live daemon an input costs about 1.5 ms.
FUZZ_SHORT_NET ?= 5000x
# A target whose coverage depends on how two goroutines interleave
# (FuzzHostileModule) finds inputs whose new coverage most candidates do not
# keep, so minimizing one runs to its limit. As a duration (60 s by
# default) that limit is the engine's too: it kills the worker and drops
# the inputs it ran, and the run counts none meanwhile. As a count the
# worker stops itself and the inputs count.
FUZZ_MINIMIZE_RACY ?= 5000x
fuzz-short:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeArgs$$' -fuzztime $(FUZZ_SHORT) ./cryptoki/wire/
	$(GO) test -run '^$$' -fuzz '^FuzzReadRequest$$' -fuzztime $(FUZZ_SHORT) ./cryptoki/wire/
	$(GO) test -run '^$$' -fuzz '^FuzzCreateTemplate$$' -fuzztime $(FUZZ_SHORT) ./daemon/token/
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZ_SHORT) ./daemon/adminapi/
	$(GO) test -run '^$$' -fuzz '^FuzzTLSListener$$' -fuzztime $(FUZZ_SHORT_NET) ./daemon/
	$(GO) test -run '^$$' -fuzz '^FuzzParseBackup$$' -fuzztime $(FUZZ_SHORT) ./keystore/
	$(GO) test -run '^$$' -fuzz '^FuzzHostileModule$$' -fuzztime $(FUZZ_SHORT) -fuzzminimizetime $(FUZZ_MINIMIZE_RACY) ./cryptoki/shmring/
	$(GO) test -run '^$$' -fuzz '^FuzzParseDump$$' -fuzztime $(FUZZ_SHORT) ./keystore/
	@$(MAKE) --no-print-directory fuzz-module-short

# Short fuzzing runs of every fuzz target (longer: FUZZTIME=10m make fuzz).
FUZZTIME ?= 20s
fuzz: test-deps
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# The keystore's hot path beside its floors and a bare socket round trip,
# in one run of the built binary.
bench: build test-deps
	$(BIN)/hsmemu bench hotpath

# The daemon in the foreground on its defaults: a managed swtpm and the
# keystore under ~/.local/share/hsmemu, with the module's socket there too.
run: build test-deps
	@echo "module: $(CURDIR)/$(BIN)/hsmemu-pkcs11.so"
	@echo "try, in another shell: pkcs11-tool --module $(CURDIR)/$(BIN)/hsmemu-pkcs11.so -L"
	@echo "(apt-get install opensc for pkcs11-tool); stop the daemon with Ctrl-C"
	$(BIN)/hsmemu serve

# ---- Installing on a machine ----
# make install [PREFIX=/usr/local] [DESTDIR=]: the binary, the module, its
# p11-kit registration, the manual page and a hardened systemd unit
# (packaging/).
#
# The p11-kit registration goes where this machine's p11-kit looks for
# modules (pkg-config's p11_module_configs, /usr/share/p11-kit/modules on
# Debian), whatever the PREFIX: under /usr/local it would register
# nothing. P11KITDIR=... puts it elsewhere.
PREFIX     ?= /usr/local
BINDIR     := $(PREFIX)/bin
MODULEDIR  := $(PREFIX)/lib/hsmemu
DOCDIR     := $(PREFIX)/share/doc/hsmemu
MANDIR     ?= $(PREFIX)/share/man
ifeq ($(origin P11KITDIR),undefined)
P11KITDIR  := $(shell pkg-config --variable p11_module_configs p11-kit-1 2>/dev/null)
endif
ifeq ($(P11KITDIR),)
P11KITDIR  := $(PREFIX)/share/p11-kit/modules
endif
UNITDIR    := $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
USERROOT   ?= /
SUBST      := sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@MODULEDIR@|$(MODULEDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MODULEDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(P11KITDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/hsmemu $(DESTDIR)$(MANDIR)/man1
	install -m 0755 $(BIN)/hsmemu $(DESTDIR)$(BINDIR)/hsmemu
	install -m 0644 $(BIN)/hsmemu-pkcs11.so $(DESTDIR)$(MODULEDIR)/hsmemu-pkcs11.so
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 build/man/hsmemu.1 $(DESTDIR)$(MANDIR)/man1/hsmemu.1
	$(SUBST) packaging/hsmemu.module.in > $(DESTDIR)$(P11KITDIR)/hsmemu.module
	$(SUBST) packaging/hsmemu.service.in > $(DESTDIR)$(UNITDIR)/hsmemu.service
	chmod 0644 $(DESTDIR)$(P11KITDIR)/hsmemu.module $(DESTDIR)$(UNITDIR)/hsmemu.service
	@# The TLS listener for remote applications: a drop-in and a policy to copy (docs/remote.md).
	install -d $(DESTDIR)$(DOCDIR)/examples
	$(SUBST) packaging/remote.conf.in > $(DESTDIR)$(DOCDIR)/examples/remote.conf
	install -m 0644 packaging/policy.json $(DESTDIR)$(DOCDIR)/examples/policy.json
	chmod 0644 $(DESTDIR)$(DOCDIR)/examples/remote.conf
	@# The module's system configuration (the module reads /etc/hsmemu/module.conf), kept if edited.
	test -e $(DESTDIR)$(SYSCONFDIR)/hsmemu/module.conf || install -m 0644 packaging/module.conf.in $(DESTDIR)$(SYSCONFDIR)/hsmemu/module.conf
	@# The unit runs the daemon as the hsmemu user; members of the hsmemu group
	@# may use its socket. A staged install (DESTDIR) leaves accounts to its package.
	@if [ -n "$(DESTDIR)" ] || [ "$$(id -u)" != 0 ]; then \
		echo "create the daemon's user and group as root: scripts/add-system-user.sh"; \
	else \
		scripts/add-system-user.sh $(USERROOT); \
	fi

clean:
	rm -rf $(BIN) build
