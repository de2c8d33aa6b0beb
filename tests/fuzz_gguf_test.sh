#!/usr/bin/env bash
# Fuzzes the GGUF reader (File::FromBuffer) with libFuzzer + ASan + UBSan for a bounded number
# of executions (RS_FUZZ_RUNS, default 200000) from a seed corpus of small valid GGUF files that
# the fuzz binary writes itself. Fails on any crash, sanitizer report, leak, timeout or
# out-of-memory. Exit 77 (skipped) where clang++ or libFuzzer is missing.
# Usage: bash fuzz_gguf_test.sh [RIGSERVE] [SHARED_DIR]   (both unused; ctest passes them)
# Env: RS_FUZZ_RUNS (executions), RS_BINARY_DIR (build dir to keep the binary in between runs).
set -euo pipefail

src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RS_FUZZ_RUNS:-200000}
cxx=${RS_FUZZ_CXX:-clang++}

if ! command -v "$cxx" >/dev/null; then
  echo "SKIP: $cxx not found (apt-get install clang)"
  exit 77
fi
if ! command -v pkg-config >/dev/null; then
  echo "SKIP: pkg-config not found"
  exit 77
fi

if [ -n "${RS_BINARY_DIR:-}" ] && [ -d "$RS_BINARY_DIR" ]; then
  out="$RS_BINARY_DIR/fuzz-gguf"
else
  out="${TMPDIR:-/tmp}/rigserve-fuzz-gguf-$(id -u)"
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# libFuzzer present? (clang without compiler-rt's libFuzzer cannot link -fsanitize=fuzzer)
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  > "$work/probe.cc"
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$work/probe.cc" -o "$work/probe" 2> "$work/probe.log"; then
  echo "SKIP: $cxx cannot link -fsanitize=fuzzer (libFuzzer missing):"
  head -3 "$work/probe.log"
  exit 77
fi

absl_libs=$(pkg-config --libs absl_status absl_statusor absl_strings absl_str_format absl_hash \
  absl_raw_hash_set)
sources=("$src/tests/fuzz/gguf_fuzz.cc" "$src/worker/gguf.cc" "$src/kernels/formats.cc")
bin="$out/gguf_fuzz"
rebuild=0
[ -x "$bin" ] || rebuild=1
for f in "${sources[@]}" "$src/worker/gguf.h" "$src/kernels/formats.h" "$0"; do
  [ "$f" -nt "$bin" ] && rebuild=1
done
if [ "$rebuild" = 1 ]; then
  echo "building $bin"
  start=$(date +%s)
  "$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$src" "${sources[@]}" $absl_libs -pthread -o "$bin.tmp"
  mv "$bin.tmp" "$bin"
  echo "built in $(( $(date +%s) - start )) s"
fi

seeds="$work/seeds"
corpus="$work/corpus"
mkdir -p "$seeds" "$corpus"
RS_GGUF_WRITE_SEEDS="$seeds" "$bin"
seed_count=$(ls "$seeds" | wc -l)
if [ "$seed_count" -lt 1 ]; then
  echo "FAIL: no seeds written"
  exit 1
fi
echo "seed corpus: $seed_count files, $(cat "$seeds"/* | wc -c) bytes"

# Tokens that help the fuzzer past the magic and into the interesting keys.
cat > "$work/gguf.dict" <<'EOF'
"GGUF"
"general.alignment"
"\x03\x00\x00\x00"
"\x02\x00\x00\x00"
"\x09\x00\x00\x00"
"\x08\x00\x00\x00"
"\x00\x01\x00\x00\x00\x00\x00\x00"
"\x20\x00\x00\x00"
EOF

start=$(date +%s.%N)
set +e
ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$bin" -runs="$runs" -seed=1 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -dict="$work/gguf.dict" -artifact_prefix="$out/" -print_final_stats=1 \
    "$corpus" "$seeds" > "$work/fuzz.log" 2>&1
rc=$?
set -e
elapsed=$(echo "$(date +%s.%N) - $start" | bc 2>/dev/null || echo "?")
tail -15 "$work/fuzz.log"
if [ "$rc" -ne 0 ]; then
  echo "FAIL: libFuzzer exited with $rc after ${elapsed} s; crash input saved under $out/"
  grep -m5 -E "ERROR|runtime error|gguf_fuzz:" "$work/fuzz.log" || true
  exit 1
fi
done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/fuzz.log" | grep -o '[0-9]*$' || echo "?")
echo "fuzz_gguf_test: $done_runs executions in ${elapsed} s, no crash"
