# DWCP build, test and benchmark entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin
PLUGIN_DIR := $(BIN)/plugins
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.7.0

# Plugin binaries: folder -> bin/plugins/dwcp-plugin-<last path element>.
PLUGINS := plugins/zstd plugins/s2 plugins/lz4 plugins/passthrough accel/simd accel/qat hypervisors/qemu
# Every module of the workspace, for test and lint.
MODULES := . sdk examples/flatecodec

REPORT_DIR ?= report

GUEST_DIR ?= $(if $(DWCP_CACHE),$(DWCP_CACHE)/guest,$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/dwcp/guest)

.PHONY: help build demo test test-short bench report report-quick lint fmt proto proto-check clean guest streams fuzz

help:
	@echo "make demo        build everything, migrate a live guest through DWCP and with QEMU, compare"
	@echo "make test        the whole test suite (race detector on)"
	@echo "make build       dwcp and every plugin into $(BIN)/, catalog pinned"
	@echo "make bench       benchmarks (ratios against same-run baselines)"
	@echo "make report      the performance validation report into $(REPORT_DIR)/ (full run; report-quick: minutes)"
	@echo "make lint        go vet, staticcheck, gofmt"
	@echo "make proto       regenerate protobuf code with pinned generators"

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/dwcp ./host/cmd/dwcp
	@mkdir -p $(PLUGIN_DIR)
	@set -e; for p in $(PLUGINS); do \
		echo "build $$p"; \
		$(GO) build -o $(PLUGIN_DIR)/dwcp-plugin-$$(basename $$p) ./$$p; \
	done
	cd examples/flatecodec && $(GO) build -o ../../$(PLUGIN_DIR)/dwcp-plugin-flate .
	$(BIN)/dwcp plugins pin --dir $(PLUGIN_DIR)

demo: build
	$(BIN)/dwcp plugins list --dir $(PLUGIN_DIR)
	$(BIN)/dwcp demo --plugin-dir $(PLUGIN_DIR)

test:
	@set -e; for m in $(MODULES); do \
		echo "== go test -race $$m"; \
		(cd $$m && $(GO) test -race -timeout 20m ./...); \
	done
	@echo "== without -race: allocation counts, the path probe and the resize stall in the WAN lab (CPU-bound TLS throughput)"
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) test -count=1 -run 'Alloc' ./... | grep -v 'no test files'); done
	$(GO) test -count=1 -p 1 -run 'WANLab' ./host/modes/ ./host/transport/

test-short:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) test -short ./...); done

bench:
	@set -e; for m in $(MODULES); do \
		(cd $$m && $(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./... | grep -v '^ok\|no test files'); \
	done

report: build
	$(BIN)/dwcp bench report --plugin-dir $(PLUGIN_DIR) --out $(REPORT_DIR)

report-quick: build
	$(BIN)/dwcp bench report --quick --plugin-dir $(PLUGIN_DIR) --out $(REPORT_DIR)

lint:
	@set -e; for m in $(MODULES); do \
		echo "== lint $$m"; \
		(cd $$m && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...); \
	done
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt:
	gofmt -w $$(git ls-files '*.go')

proto:
	./tools/protoc.sh

proto-check: proto
	@git diff --exit-code -- sdk/internal/pb host/internal/pb || { echo "generated protobuf code is stale: run make proto and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- sdk/internal/pb host/internal/pb)" || { echo "make proto created untracked files"; git status --porcelain -- sdk/internal/pb host/internal/pb; exit 1; }

guest:
	testdata/guest/build-guest.sh $(GUEST_DIR)

streams: guest
	testdata/guest/capture-streams.sh

# Short runs of every fuzz target (FUZZTIME each).
FUZZTIME ?= 10s
fuzz:
	@set -e; for m in $(MODULES); do (cd $$m && \
		for pkg in $$($(GO) list ./...); do \
			for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
				echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg; \
			done; \
		done); done

clean:
	rm -rf $(BIN) .tools
