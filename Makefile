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

## test: vet, unit and integration tests, and a short fuzz run of the ETSI decoders
test: lint
	$(GO) test -count=1 -timeout 20m ./...
	$(MAKE) fuzz

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyRequest -fuzztime 10s ./etsi
	$(GO) test -run '^$$' -fuzz FuzzDecodeKeyIDs -fuzztime 10s ./etsi

## bench: every benchmark, printed as a table
bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -timeout 60m ./... | tee bench.out
	@echo; echo "== summary =="; grep -E '^Benchmark' bench.out

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin bench.out
