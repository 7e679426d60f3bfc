#!/bin/sh
# Builds the step plugins to WASM and writes OUTDIR/manifest.json.
# Usage: [GO_GUESTS=1] plugins/build.sh OUTDIR   (run from anywhere inside the repository)
set -eu
out=${1:?usage: plugins/build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$here/.."
go=${GO:-go}
# name kind version, one line per plugin (first of each kind is the default)
list='sift sift 1.0.0
estimate estimate 1.0.0
cascade reconcile 1.1.0
cascade-yanetal reconcile 1.1.0
verify verify 1.0.0
amplify amplify 1.0.0'
entries=""
echo "$list" | while read -r name kind version; do
	# A step with a C build (plugins/c, committed, equal to the Go
	# reference bit for bit: every shipped step) ships it; GO_GUESTS=1
	# ships the Go builds of every step instead.
	if [ -z "${GO_GUESTS:-}" ] && [ -f "plugins/c/wasm/$name.wasm" ]; then
		cp "plugins/c/wasm/$name.wasm" "$out/$name.wasm"
		continue
	fi
	# satconv, signext: non-trapping float→int and sign-extension opcodes
	# (wazero supports both; fewer instructions than the emulated forms)
	GOOS=wasip1 GOARCH=wasm GOWASM=satconv,signext CGO_ENABLED=0 "$go" build -trimpath -buildmode=c-shared \
		-o "$out/$name.wasm" "./plugins/wasm/$name"
done
{
	printf '{\n  "abi": 1,\n  "plugins": [\n'
	first=1
	echo "$list" | while read -r name kind version; do
		sum=$(sha256sum "$out/$name.wasm" | cut -d' ' -f1)
		[ $first -eq 1 ] || printf ',\n'
		first=0
		printf '    {"name": "%s", "step": "%s", "version": "%s", "abi": 1, "file": "%s.wasm", "sha256": "%s"}' \
			"$name" "$kind" "$version" "$name" "$sum"
	done
	printf '\n  ]\n}\n'
} > "$out/manifest.json.tmp"
mv "$out/manifest.json.tmp" "$out/manifest.json"
echo "plugins: $(ls "$out"/*.wasm | wc -l) modules and manifest.json in $out"
