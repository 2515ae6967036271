# superd: `make run` starts every built-in service on loopback; `make test`
# is what CI runs.
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all build run test fuzz bench failure promcheck clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/superd ./cmd/superd

run: build
	$(BIN)/superd run -config examples.hcl

# vet, then every test with the race detector.
test:
	$(GO) vet ./...
	$(GO) test -race -timeout 20m ./...

# A short run of every fuzz target (FUZZTIME each).
FUZZTIME ?= 20s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf $(BIN)

# promtool checks of examples/prometheus and of a live /metrics scrape
# (installs the Debian package prometheus when promtool is missing).
promcheck:
	bash examples/prometheus/check.sh
