# qkdkms — build, test and run. Everything it needs comes from go.mod.
GO      ?= go
BIN     := bin/qkdkms
PLUGINS := bin/plugins
export CGO_ENABLED ?= 0

.PHONY: all build plugins test fuzz bench lint run e2e up down clean

all: build plugins

## build: the one binary, static (CGO_ENABLED=0), into bin/qkdkms
build:
	$(GO) build -trimpath -o $(BIN) ./node/cmd/qkdkms

## plugins: the post-processing step plugins (WASM) and their manifest into bin/plugins
plugins:
	./plugins/build.sh $(PLUGINS)

## test: vet, unit and integration tests, and a short fuzz run of the ETSI decoders (40,000 inputs each)
test: lint
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) fuzz

# Execution counts, not durations: a duration -fuzztime can fail spuriously
# with "context deadline exceeded" on a loaded machine (golang/go#75804,
# fixed in Go 1.27).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyRequest -fuzztime 40000x ./etsi
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyIDs -fuzztime 40000x ./etsi

## bench: every benchmark, printed as a table
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 60m ./... | tee bench.out
	@echo; echo "== summary =="; grep -E '^Benchmark' bench.out

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## run: the embedded demo — two sites × three nodes on 127.0.0.1 joined by a simulated 25 km QKD link
run: build plugins
	$(BIN) demo

## e2e: the slower suites — the compose deployment's seed workflow and a short run of every failover scenario
e2e: build plugins
	TESTCLUSTER_COMPOSE=1 $(GO) test -tags e2e -count=1 -timeout 25m ./testcluster

## up / down: the docker-compose deployment (images FROM scratch, built from bin/)
up: build plugins
	docker-compose -f deploy/docker-compose.yml up --build

down:
	docker-compose -f deploy/docker-compose.yml down

clean:
	rm -rf bin bench.out
