# qkdkms — build, test and run. Everything it needs comes from go.mod.
GO      ?= go
BIN     := bin/qkdkms
LAB     := bin/qkdkms-lab
PLUGINS := bin/plugins
export CGO_ENABLED ?= 0

.PHONY: all build lab plugins cplugins check-cplugins test chart-test fuzz bench lint run e2e up down clean

all: build plugins

## build: the server binary, static (CGO_ENABLED=0), into bin/qkdkms
build:
	$(GO) build -trimpath -o $(BIN) ./node/cmd/qkdkms

## lab: the failover experiments' command (reports, plots) into bin/qkdkms-lab;
## it runs bin/qkdkms as the nodes, which does not link it
lab: build
	$(GO) build -trimpath -o $(LAB) ./testcluster/cmd/qkdkms-lab

## plugins: the post-processing step plugins (WASM) and their manifest into bin/plugins
plugins:
	./plugins/build.sh $(PLUGINS)

## cplugins: rebuild the committed C step plugins (plugins/c/wasm) with clang-19 and lld-19
cplugins:
	./plugins/c/build.sh

## check-cplugins: fail unless a rebuild of the C plugins reproduces the committed bytes
check-cplugins:
	@tmp=$$(mktemp -d) && ./plugins/c/build.sh $$tmp && \
	for f in plugins/c/wasm/*.wasm; do \
		cmp "$$f" "$$tmp/$$(basename $$f)" || { echo "$$f: the committed build differs from a rebuild (make cplugins)"; rm -rf $$tmp; exit 1; }; \
	done; \
	for f in $$tmp/*.wasm; do [ -f plugins/c/wasm/$$(basename $$f) ] || { echo "$$(basename $$f): built but not committed (make cplugins)"; rm -rf $$tmp; exit 1; }; done; \
	rm -rf $$tmp; echo "plugins/c: committed builds reproduced byte for byte"

## test: lint, every package's tests under the race detector (which needs
## cgo), a short fuzz run of the decoders and the chart test
# plugins/host is the slowest package under -race: 7 min on the 2-core
# machine with another make test running (2026-11-30), 1 min without -race.
test: lint
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) fuzz
	$(MAKE) chart-test

## chart-test: render deploy/helm/qkdkms with the Helm SDK and check every
## object strictly (its own module, deploy/k8stest; -mod=mod fills its go.sum
## when the main module gained a dependency)
chart-test:
	cd deploy/k8stest && $(GO) test -mod=mod -count=1 -timeout 10m ./...

# Execution counts, not durations: a duration -fuzztime can fail spuriously
# with "context deadline exceeded" on a loaded machine (golang/go#75804,
# fixed in Go 1.27).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyRequest -fuzztime 40000x ./etsi
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyIDs -fuzztime 40000x ./etsi
	$(GO) test -run '^$$' -fuzz FuzzRewrite -fuzztime 20000x ./plugins/instrument
	$(MAKE) fuzz-network

# The decoders the network reaches (issue 13 item 10): Raft log entries,
# batches and snapshots (raftstore), the link's framing, JSON messages and
# transit frames (node/link, quantum/sim), the internal forward/peer API
# (node/kme, node/forward), the seed API (etsi). Budgets chosen so that the
# whole list takes about 80 s on the 2-core machine, builds included.
fuzz-network:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCommand$$' -fuzztime 4000x ./raftstore
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeBatch$$' -fuzztime 10000x ./raftstore
	$(GO) test -run '^$$' -fuzz '^FuzzRestore$$' -fuzztime 4000x ./raftstore
	$(GO) test -run '^$$' -fuzz '^FuzzRestoreFields$$' -fuzztime 4000x ./raftstore
	$(GO) test -run '^$$' -fuzz '^FuzzWire$$' -fuzztime 3000x ./node/link
	$(GO) test -run '^$$' -fuzz '^FuzzLinkMessage$$' -fuzztime 5000x ./node/link
	$(GO) test -run '^$$' -fuzz '^FuzzTransitFrame$$' -fuzztime 5000x ./quantum/sim
	$(GO) test -run '^$$' -fuzz '^FuzzInternalDecode$$' -fuzztime 5000x ./node/kme
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeError$$' -fuzztime 5000x ./node/forward
	$(GO) test -run '^$$' -fuzz '^FuzzDeadline$$' -fuzztime 5000x ./node/forward
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSeedConnection$$' -fuzztime 5000x ./etsi
	$(GO) test -run '^$$' -fuzz '^FuzzSeedHandler$$' -fuzztime 3000x ./etsi

## bench: every benchmark, printed as a table: the post-processing figures
## first (reconcile over 200 frames per point, amplify, scheduler gaps,
## whole sessions, the live link), then the rest
BENCH_PP := ^Benchmark(Reconcile|Amplify|SafepointGap|Session|LiveKeyRate)$$
bench:
	$(GO) test -run '^$$' -bench '^BenchmarkReconcile$$' -benchtime 200x -timeout 60m ./plugins/host | tee bench.out
	$(GO) test -run '^$$' -bench '^Benchmark(Amplify|SafepointGap)$$' -benchtime 5x -timeout 30m ./plugins/host | tee -a bench.out
	$(GO) test -run '^$$' -bench '^BenchmarkSession$$' -benchtime 5x -timeout 30m ./quantum/session | tee -a bench.out
	$(GO) test -run '^$$' -bench '^BenchmarkLiveKeyRate$$' -benchtime 24x -timeout 30m ./node | tee -a bench.out
	$(GO) test -run '^$$' -bench . -skip '$(BENCH_PP)' -benchtime 2s -timeout 60m ./... | tee -a bench.out
	@echo; echo "== summary =="; grep -E '^Benchmark' bench.out

## lint: gofmt, go vet, go.mod tidy, and staticcheck with no finding but
## those waived in .ci/staticcheck-waivers (elsewhere: //lint:ignore CHECK reason)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum untidy (run go mod tidy):"; $(GO) mod tidy -diff; exit 1; }
	./.ci/staticcheck $(GO) run $(STATICCHECK)

## run: the embedded demo — two sites × three nodes on 127.0.0.1 joined by a simulated 25 km QKD link
run: build plugins
	$(BIN) demo

## e2e: the slower suites — the compose deployment's seed workflow and under faults, and a short run of every failover scenario
## (-p 1: one testcluster package at a time, as when they were one package: each starts its own clusters)
e2e: build plugins
	TESTCLUSTER_COMPOSE=1 $(GO) test -tags e2e -p 1 -count=1 -timeout 25m ./testcluster/...

## up / down: the docker-compose deployment (images FROM scratch, built from bin/);
## SEED=1 adds deploy/docker-compose.seed.yml: the plain-HTTP seed API on the host's 127.0.0.1:8000/8001
up: build plugins
	docker-compose -f deploy/docker-compose.yml $(if $(SEED),-f deploy/docker-compose.seed.yml) up --build

down:
	docker-compose -f deploy/docker-compose.yml down

clean:
	rm -rf bin bench.out
