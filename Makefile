# hsmemu build. `make run` and `make test` work on a fresh Debian machine:
# each installs the Debian packages it needs first.

GO      ?= go
BIN     := bin
GOFLAGS ?=
export CGO_ENABLED := 1

.PHONY: all build deps test-deps test vet race fuzz bench run clean

all: build

build: deps
	$(GO) build $(GOFLAGS) -o $(BIN)/hsmemu ./cmd/hsmemu

deps:
	@scripts/install-deps.sh build

test-deps:
	@scripts/install-deps.sh test

vet:
	$(GO) vet ./...

# Every test, with the race detector, against real swtpm instances that the
# tests start and stop themselves.
test: test-deps build vet
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed on:"; gofmt -l .; exit 1; }
	$(GO) test -race -timeout 15m ./...

# Short fuzzing runs of every fuzz target (longer: FUZZTIME=10m make fuzz).
FUZZTIME ?= 20s
fuzz: test-deps
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# The keystore's hot path beside its floors, in one run.
bench: test-deps
	$(GO) test -run '^$$' -bench 'Open|Seal|Floor' -benchmem ./keystore/

run: build test-deps
	$(BIN)/hsmemu serve

clean:
	rm -rf $(BIN)
