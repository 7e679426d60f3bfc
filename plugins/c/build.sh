#!/bin/sh
# Builds the C step plugins (plugins/c/<name>/<name>.c) to WASM with clang-19
# and lld-19, byte for byte reproducibly, into OUTDIR (default plugins/c/wasm,
# where the builds are committed so that a machine with only Go can run them).
# Usage: plugins/c/build.sh [OUTDIR]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/wasm}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cc=${CLANG:-clang-19}
command -v "$cc" >/dev/null || { echo "plugins/c/build.sh: $cc not found (Debian: apt-get install -y clang-19 lld-19)" >&2; exit 1; }
cd "$here"
for src in */*.c; do
	name=$(basename "$src" .c)
	# -fuse-ld=lld with lld-19's wasm-ld; no libc, no entry point, the
	# exports named by QKD_EXPORT; SIMD128 and bulk memory (wazero supports
	# both); paths and build IDs kept out of the output. QKD_CFLAGS: extra
	# flags for test builds only (the committed modules are built without).
	"$cc" --target=wasm32-unknown-unknown -O3 -msimd128 -mbulk-memory -mnontrapping-fptoint -msign-ext \
		-nostdlib -ffreestanding -fno-builtin-malloc -fdebug-prefix-map="$here"=. -ffile-prefix-map="$here"=. \
		-Wall -Wextra -Werror -Wno-unused-function -Wno-unused-parameter -I. \
		-fuse-ld=lld -Wl,--no-entry -Wl,--strip-all -Wl,--stack-first -Wl,-z,stack-size=1048576 \
		${QKD_CFLAGS:-} -o "$out/$name.wasm" "$src"
done
echo "plugins/c: $(ls "$out"/*.wasm | wc -l) modules in $out"
