# superd: `make run` starts every built-in service on loopback; `make test`
# is what CI runs.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run run-sni test fuzz bench failure promcheck test-tools clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/superd ./cmd/superd

run: build
	$(BIN)/superd run -config examples.hcl

# examples/sni.hcl's two names need their certificates: made self-signed in
# /tmp/superd-tls (kept while still valid).
SNI_NAMES := one.localhost two.localhost
run-sni: build
	$(GO) run ./examples/selfsigned -dir /tmp/superd-tls $(SNI_NAMES)
	$(BIN)/superd run -config examples/sni.hcl

# vet (also for 32-bit x86, whose raw system call numbers differ, and for
# macOS and FreeBSD, where superd builds without the exec factory), then
# every test with the race detector.
test:
	$(GO) vet ./...
	GOARCH=386 $(GO) vet ./...
	GOOS=darwin $(GO) vet ./...
	GOOS=freebsd $(GO) vet ./...
	$(GO) test -race -timeout 20m ./...
	# Again with one P, where the poller's loop serves connections itself
	# (internal/engine/serve_loop.go); -p 2, as the go command would
	# otherwise test one package at a time; -count=1, as the test cache
	# does not see GOMAXPROCS (the runtime reads it, not the tests) and
	# would replay the first pass.
	GOMAXPROCS=1 $(GO) test -race -count=1 -p 2 -timeout 20m ./...

# A short run of every fuzz target (FUZZTIME each). Minimizing a new input
# is bounded: by default it may take 60 s per input, and a whole
# configuration (FuzzParse's seeds) takes that long, so a short run would
# only minimize.
FUZZTIME ?= 20s
FUZZMINIMIZETIME ?= 2s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $$pkg || exit 1; \
	  done; \
	done

# The long versions of the failure tests (cmd/superd/failure_e2e_test.go):
# reloads under load, SIGTERM under load, garbage input, many connections.
failure:
	SUPERD_FAILURE_LONG=1 $(GO) test -race -count=1 -timeout 30m -v -run 'Failure' ./cmd/superd/

clean:
	rm -rf $(BIN)

# superd against a plain Go baseline server on loopback (bench/run.sh):
# builds bin/superd, bin/baseline, bin/superbench, prints the table of
# ratios and writes bench/results.md; under 10 minutes. BENCHFLAGS go to
# the matrix runner, e.g. BENCHFLAGS="-cells E1,CHAT -runs 5".
BENCHFLAGS ?=
bench:
	GO=$(GO) bash bench/run.sh $(BENCHFLAGS)

# promtool checks of examples/prometheus and of a live /metrics scrape
# (installs the Debian package prometheus when promtool is missing).
promcheck:
	bash examples/prometheus/check.sh

# The programs tests run as real peers: nc, telnet, rdate, openssl and curl
# (the README's commands, TestReadmeCommands; rdate against the time
# service), haproxy (PROXY protocol), systemd-socket-activate and
# systemd-analyze (socket activation, the unit files). Installs the Debian
# packages of those missing when it can (root with apt-get) and says so
# when it cannot; the tests that need one then skip, with the reason.
TEST_TOOLS := nc:netcat-openbsd telnet:telnet rdate:rdate openssl:openssl curl:curl \
	haproxy:haproxy systemd-socket-activate:systemd systemd-analyze:systemd
test-tools:
	@missing=; for t in $(TEST_TOOLS); do \
	  command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; \
	done; \
	missing=$$(echo $$missing | tr ' ' '\n' | sort -u | xargs); \
	if [ -z "$$missing" ]; then echo "test tools: all installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "test tools: installing $$missing"; \
	  { apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	  echo "test tools: could not install $$missing; the tests that need them skip"; \
	else echo "test tools: missing $$missing (installing needs root and apt-get); the tests that need them skip"; fi
