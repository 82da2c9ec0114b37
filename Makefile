# meshauth: build, run in a dev Vault, test. `make help` lists the targets.
SHELL := /bin/bash

PLUGIN      := vault-plugin-secrets-meshauth
BIN_DIR     := $(CURDIR)/bin
PLUGIN_BIN  := $(BIN_DIR)/$(PLUGIN)
# A second build stamped with a version, for the end-to-end upgrade test.
NEXT_BIN    := $(BIN_DIR)/$(PLUGIN)-next
NEXT_VERSION := v0.0.2-e2e
VERSION_VAR := github.com/datapunk/vault-plugin-secrets-meshauth.version

# The Go toolchain for everything this Makefile builds, tests and checks of
# the plugin (and the tools it installs): the machine's Go may carry known
# vulnerabilities in crypto/tls, crypto/x509 and net/http that are reachable
# from the plugin (govulncheck finds them; see `make vuln`), and the plugin
# binary is linked with that standard library. The go command fetches this
# release through the module proxy the first time. Vault itself is built by
# scripts/vault-bin.sh with the machine's Go, as before.
export GOTOOLCHAIN := go1.27.3

# Pinned tool versions; `make tools` installs them into $(TOOLS_DIR).
GOLANGCI_LINT_VERSION := v2.15.0
GOFUMPT_VERSION       := v0.12.0
BENCHSTAT_VERSION     := v0.0.0-20260908200009-22c9c6c9d4da
GOVULNCHECK_VERSION   := v1.9.0
TOOLS_DIR             := $(CURDIR)/.tools

# End-to-end and fuzz budgets.
E2E_TIMEOUT ?= 30m
E2E_RUN     ?= .
FUZZ_TIME   ?= 30s
BENCH_COUNT ?= 6
BENCH_FLAGS ?=

.PHONY: help build dev test test-unit fuzz fuzz-short test-e2e test-e2e-ha vault vuln vulndb-refresh bench fmt vet lint tools clean
.PHONY: test-python vectors lint-python python-deps

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

build: ## build the plugin binary into bin/
	go build -trimpath -o $(PLUGIN_BIN) ./cmd/$(PLUGIN)

dev: ## build everything and run a dev Vault (TLS) with meshauth mounted; Ctrl-C stops it
	./scripts/dev.sh

# Fuzz targets: a name is in the root package; <package>:<name> elsewhere.
# Targets are <module dir>:<name>; the module's own go.mod decides its build.
FUZZ_TARGETS := .:FuzzParseToken .:FuzzParseCertificates .:FuzzServiceWrite .:FuzzLoginFields \
  .:FuzzParseSPIFFEID meshtoken:FuzzParse meshtoken:FuzzCheckMembers meshtoken:FuzzVerifierSigned \
  meshtoken:FuzzForwardedCert .:FuzzCompileClaimsTemplate

# Go modules of the repository: the plugin, the token contract services
# import (meshtoken), the client library, gRPC credentials and interceptors
# (grpcauth), and the end-to-end suite.
LIB_MODULES := meshtoken client grpcauth
# The worked example (orders and payments) is a module of its own too, so
# the plugin's module does not carry its dependencies; it is vetted, linted,
# kept tidy and tested with the libraries.
MODULES     := $(LIB_MODULES) examples
# Go tools of the Python package: the shared-vector generator (its own module).
PY_GO_MODULES := python/vectorgen
# Every Go module that ships or tests something: vet, lint and vuln cover
# them all, so a module added here is checked on every submission.
GO_MODULES  := . $(MODULES) e2e $(PY_GO_MODULES)
# Debian's interpreter, never another python3 that may come first on PATH.
PYTHON := /usr/bin/python3

test: test-unit test-python fuzz-short test-e2e ## run every test: unit (-race), Python, a short fuzz of each target, end-to-end against real Vault

test-unit: ## unit tests of the plugin and of every module but e2e (meshtoken, client, grpcauth, examples), with the race detector
	go test -race -count=1 ./...
	@for m in $(MODULES); do (cd $$m && go test -race -count=1 ./...) || exit 1; done
	@for m in $(PY_GO_MODULES); do (cd $$m && go test -race -count=1 ./...) || exit 1; done

python-deps: ## install the Debian packages python/ needs, when missing (says what it installs)
	@./scripts/python-deps.sh

test-python: python-deps ## the Python package's tests (Debian's python3; shared vectors, differential corpus); fails if none runs
	@cd python && out=$$(PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -m pytest -q -p no:cacheprovider -m "not e2e" 2>&1); rc=$$?; echo "$$out" | tail -20; \
	  if ! echo "$$out" | grep -qE '^[0-9]+ passed'; then echo "test-python: pytest ran no test"; exit 1; fi; exit $$rc

vectors: ## regenerate testdata/vectors (shared vectors and differential corpus) from meshtoken, then check both languages
	cd python/vectorgen && go run . -out $(CURDIR)/testdata/vectors
	cd python/vectorgen && go test -count=1 ./...
	@$(MAKE) --no-print-directory test-python

lint-python: python-deps ## pyflakes and a byte-compile of python/
	$(PYTHON) -m pyflakes python/src python/tests python/bench.py
	PYTHONDONTWRITEBYTECODE=1 $(PYTHON) -c "import pathlib, sys; [compile(p.read_text(), str(p), 'exec') for d in sys.argv[1:] for p in pathlib.Path(d).rglob('*.py')]" python

fuzz: ## fuzz every target for FUZZ_TIME each (default 30s); seeds in testdata/fuzz
	@for t in $(FUZZ_TARGETS); do dir=$${t%%:*}; f=$${t#*:}; \
	  echo "==> $$f in $$dir for $(FUZZ_TIME)"; (cd $$dir && go test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZ_TIME) .) || exit 1; done

fuzz-short: ## fuzz every target briefly, as CI does
	@$(MAKE) --no-print-directory fuzz FUZZ_TIME=5s

vault: ## build the pinned Vault once per machine (cold: ~17 min on 2 cores)
	@./scripts/vault-bin.sh >/dev/null

test-e2e: build ## end-to-end tests against real Vault servers (builds Vault if needed)
	@vault_bin=$$(./scripts/vault-bin.sh) && \
	go build -trimpath -ldflags "-X $(VERSION_VAR)=$(NEXT_VERSION)" -o $(NEXT_BIN) ./cmd/$(PLUGIN) && \
	cd e2e && VAULT_BIN=$$vault_bin MESHAUTH_PLUGIN=$(PLUGIN_BIN) MESHAUTH_PLUGIN_NEXT=$(NEXT_BIN) \
	  go test -count=1 -timeout $(E2E_TIMEOUT) -run '$(E2E_RUN)' -v ./... 2>&1 | grep -vE '^\s*$$' ; exit $${PIPESTATUS[0]}

test-e2e-ha: ## the 3-node Raft HA scenario alone (failover, snapshot restore, periodic rotation; ~4 min)
	$(MAKE) test-e2e E2E_RUN=TestHACluster

bench: tools build ## in-process benchmarks (benchstat), then the load tool against a real Vault (writes docs/benchmarks.md)
	go test -run='^$$' -bench=. -benchmem -count=$(BENCH_COUNT) . | tee bench.txt
	$(TOOLS_DIR)/benchstat bench.txt
	@vault_bin=$$(./scripts/vault-bin.sh) && cd e2e && VAULT_BIN=$$vault_bin MESHAUTH_PLUGIN=$(PLUGIN_BIN) \
	  go run ./cmd/meshauth-bench -out $(CURDIR)/docs/benchmarks.md $(BENCH_FLAGS)

fmt: tools ## format with gofumpt
	$(TOOLS_DIR)/gofumpt -w .

vet: ## go vet every module
	@for m in $(GO_MODULES); do (cd $$m && go vet ./...) || exit 1; done

lint: tools lint-python ## golangci-lint and gofumpt, every module; every go.mod tidy; pyflakes
	$(TOOLS_DIR)/golangci-lint run ./...
	@for m in $(filter-out .,$(GO_MODULES)); do (cd $$m && $(TOOLS_DIR)/golangci-lint run --config $(CURDIR)/.golangci.yml ./...) || exit 1; done
	@test -z "$$($(TOOLS_DIR)/gofumpt -l .)" || { echo "gofumpt would change:"; $(TOOLS_DIR)/gofumpt -l .; exit 1; }
	@for m in $(GO_MODULES) tools/vault tools/vulndb; do (cd $$m && go mod tidy -diff >/dev/null) || { echo "$$m/go.mod is not tidy: run go mod tidy there (e2e follows the root module through its replace)"; exit 1; }; done

# govulncheck lives in a folder named by its version, so raising the pin
# installs the new one (v1.1.4 panics on Go 1.27's standard library).
GOVULNCHECK := $(TOOLS_DIR)/govulncheck-$(GOVULNCHECK_VERSION)/govulncheck

vuln: $(GOVULNCHECK) ## govulncheck of every Go module (with GOTOOLCHAIN's standard library) against a local copy of the Go vulnerability database
	@db=$$(./scripts/vulndb.sh) && for m in $(GO_MODULES); do echo "==> $$m"; (cd $$m && $(GOVULNCHECK) -db file://$$db ./...) || exit 1; done

vulndb-refresh: ## pin the newest Go vulnerability database in tools/vulndb (then run make vuln and commit tools/vulndb)
	cd tools/vulndb && go get golang.org/x/vulndb@latest && go mod tidy
	@echo "tools/vulndb now pins $$(cd tools/vulndb && go list -m -f '{{.Version}}' golang.org/x/vulndb); run make vuln, then commit tools/vulndb/go.mod and go.sum"

tools: $(TOOLS_DIR)/golangci-lint $(TOOLS_DIR)/gofumpt $(TOOLS_DIR)/benchstat ## install the pinned linters and benchstat

$(TOOLS_DIR)/golangci-lint:
	GOBIN=$(TOOLS_DIR) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
$(TOOLS_DIR)/gofumpt:
	GOBIN=$(TOOLS_DIR) go install mvdan.cc/gofumpt@$(GOFUMPT_VERSION)
$(GOVULNCHECK):
	GOBIN=$(dir $@) go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
$(TOOLS_DIR)/benchstat:
	GOBIN=$(TOOLS_DIR) go install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

clean: ## remove build output (not the cached Vault)
	rm -rf $(BIN_DIR) .dev bench.txt
