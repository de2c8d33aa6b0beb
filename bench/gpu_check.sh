#!/usr/bin/env bash
# The GPU check: runs the CUDA tests and the GPU benchmark and prints one short table last.
#
#   bench/gpu_check.sh --prebuilt DIR [--quick]   binaries + libraries packed by bench/gpu_pack.sh
#                                                  (the GPU machine: no Debian packages there)
#   bench/gpu_check.sh [--quick]                   build here (needs the project's packages) for
#                                                  the GPU's architecture, then run
#
# Prints the GPU (nvidia-smi), runs every tests/cuda test binary, then gpu_bench_main: device
# copy and read bandwidth, the decode matvec per format on the 35b-a3b / 27b shapes (GB/s and
# fraction of the measured bandwidth), and the matvec-only estimate of batch-1 decode tok/s;
# then gpu_model_main: the whole model with --backend cuda on synthetic 35b-a3b / 27b Q4_K_M
# (decode tok/s at 4K context and its fraction of the read bandwidth, prefill 512 / 4K / 8K,
# aggregate decode with 8 and 32 sequences, and where one decode step's device time goes: each
# launch timed on the device, by model part and entry point).
# Without a GPU it says so and exits 0 (after building or locating the binaries).
# Logs go to $GPU_CHECK_LOG_DIR, else $OUT when set (the device machine's return folder).
# GPU_TESTS (names of tests/cuda binaries) runs only those; GPU_TEST_TIMEOUT (s, default 240)
# bounds each; GPU_MODEL_ARGS / GPU_MODEL_TIMEOUT the same for gpu_model_main.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREBUILT=""
QUICK=()
while (($#)); do
  case "$1" in
    --prebuilt) PREBUILT=${2:?--prebuilt needs a folder}; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    -h|--help) sed -n '2,19p' "$0" | cut -c3-; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
LOG=${GPU_CHECK_LOG_DIR:-${OUT:-}}
[[ -n "$LOG" ]] && mkdir -p "$LOG"
t_start=$(date +%s)

# ---- the GPU ------------------------------------------------------------------------------------
gpu_line="none"
arch=90
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu_line=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  [[ "$cap" =~ ^[0-9]+$ ]] && arch=$cap
  echo "GPU: $gpu_line (sm_$arch)"
else
  echo "GPU: none found (nvidia-smi missing or sees no device)"
fi

# ---- binaries -------------------------------------------------------------------------------------
if [[ -n "$PREBUILT" ]]; then
  PREBUILT=$(cd "$PREBUILT" && pwd) || { echo "gpu_check: no folder $PREBUILT" >&2; exit 1; }
  BIN=$PREBUILT/bin
  export LD_LIBRARY_PATH="$PREBUILT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [[ -d "$PREBUILT/golden" ]] && export RS_GOLDEN_DIR="$PREBUILT/golden"
  [[ -f "$PREBUILT/MANIFEST" ]] && sed -n '1,3p' "$PREBUILT/MANIFEST"
  if [[ "$gpu_line" != none && -f "$PREBUILT/MANIFEST" ]] &&
     ! grep -q "arch: sm_$arch" "$PREBUILT/MANIFEST"; then
    echo "gpu_check: WARNING: binaries built for $(grep arch: "$PREBUILT/MANIFEST"), GPU is sm_$arch"
  fi
else
  BUILD=${BUILD_DIR:-$ROOT/build-gpucheck}
  NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  echo "gpu_check: building for sm_$arch in $BUILD"
  if ! cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRIGSERVE_WITH_CUDA=ON \
      -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$arch" >"${LOG:-/tmp}/gpu_check_cmake.log" 2>&1; then
    echo "gpu_check: configure failed (see ${LOG:-/tmp}/gpu_check_cmake.log); on a host without the"
    echo "  project's packages build with bench/gpu_pack.sh elsewhere and run --prebuilt DIR"
    tail -5 "${LOG:-/tmp}/gpu_check_cmake.log"
    exit 1
  fi
  targets=(gpu_bench_main gpu_model_main)
  for src in "$ROOT"/tests/cuda/*_test.cc; do
    [[ "$src" == *_emu_test.cc ]] && continue  # host emulation: the test suite runs those
    targets+=("$(basename "$src" .cc)")
  done
  ninja -C "$BUILD" -j"${JOBS:-$(nproc)}" "${targets[@]}" || { echo "gpu_check: build failed"; exit 1; }
  BIN=$(mktemp -d)
  cp "$BUILD/bench/gpu_bench_main" "$BUILD/bench/gpu_model_main" "$BIN/"
  for t in "${targets[@]:2}"; do cp "$BUILD/tests/$t" "$BIN/"; done
fi
missing=$(for b in "$BIN"/*; do ldd "$b" 2>/dev/null | grep "not found"; done | sort -u)
if [[ -n "$missing" ]]; then
  echo "gpu_check: shared libraries missing:"; echo "$missing"; exit 1
fi

# ---- tests ------------------------------------------------------------------------------------
declare -a test_rows=()
all_ok=1
# GPU_TESTS="cuda_ops_test cuda_model_test ...": only those (a rerun after a change; default all).
for t in "$BIN"/cuda_*_test; do
  name=$(basename "$t")
  if [[ -n "${GPU_TESTS:-}" && " $GPU_TESTS " != *" $name "* ]]; then continue; fi
  out=$(timeout "${GPU_TEST_TIMEOUT:-240}" "$t" --gtest_brief=1 2>&1)
  rc=$?
  [[ -n "$LOG" ]] && printf '%s\n' "$out" >"$LOG/$name.log"
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -1)
  failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -1)
  [[ -z "$failed" ]] && failed=$(sed -n 's/^ *\([0-9][0-9]*\) FAILED TESTS*$/\1/p' <<<"$out" | tail -1)
  [[ -z "$failed" && $rc -ne 0 ]] && failed="?"
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) test.*/\1/p' <<<"$out" | tail -1)
  row=$(printf '%-22s rc=%-3s passed %-4s failed %-4s skipped %s' "$name" "$rc" "${passed:-0}" \
        "${failed:-0}" "${skipped:-0}")
  test_rows+=("$row")
  if ((rc != 0)); then
    all_ok=0
    echo "---- $name failed (rc $rc); first failures:"
    grep -E "Failure|FAILED|error|Expected|got" <<<"$out" | head -25
  fi
  # A crash (a signal; 124 is the timeout) leaves no summary: rerun it with every test named
  # (gtest flushes each "[ RUN ]" line) to find which one, and take a backtrace of that one
  # where cuda-gdb is installed.
  if ((rc > 128)) || ((rc == 124)); then
    verbose=$(timeout "${GPU_TEST_TIMEOUT:-240}" "$t" 2>&1)
    [[ -n "$LOG" ]] && printf '%s\n' "$verbose" >"$LOG/$name.verbose.log"
    last=$(grep '^\[ RUN      \]' <<<"$verbose" | tail -1 | sed 's/^\[ RUN      \] //')
    echo "---- $name: the last test started was '${last:-?}'"
    tail -8 <<<"$verbose"
    gdb=$(command -v cuda-gdb || ls /usr/local/cuda/bin/cuda-gdb 2>/dev/null)
    if ((rc != 124)) && [[ -n "$last" && -n "$gdb" ]]; then
      echo "---- backtrace ($gdb)"
      timeout 150 "$gdb" -batch -ex run -ex bt --args "$t" --gtest_filter="$last" 2>&1 |
        grep -E '^#|signal|SIG' | head -30
    fi
  fi
done

# ---- benchmark --------------------------------------------------------------------------------
bench_out=$("$BIN/gpu_bench_main" "${QUICK[@]}" 2>&1)
bench_rc=$?
[[ -n "$LOG" ]] && printf '%s\n' "$bench_out" >"$LOG/gpu_bench.log"
# The whole model (--backend cuda) on synthetic 35b-a3b / 27b Q4_K_M: decode at 4K context,
# prefill 512 / 4K / 8K, 8 and 32 concurrent sequences. GPU_MODEL_ARGS overrides the defaults.
model_out=""
model_rc=0
if [[ "$gpu_line" != none ]]; then
  if ((${#QUICK[@]})); then model_args=(--models 35b-a3b:Q4_K_M --no-8k --batches 8); else model_args=(); fi
  # shellcheck disable=SC2206
  [[ -n "${GPU_MODEL_ARGS:-}" ]] && model_args=($GPU_MODEL_ARGS)
  model_out=$(timeout "${GPU_MODEL_TIMEOUT:-300}" "$BIN/gpu_model_main" "${model_args[@]}" 2>&1)
  model_rc=$?
  [[ -n "$LOG" ]] && printf '%s\n' "$model_out" >"$LOG/gpu_model.log"
  echo "---- gpu_model_main (rc $model_rc)"
  sed '/^==== model on GPU/,$d' <<<"$model_out" | tail -120
fi
# Details first, the summary table (from the "====" line) last, with the test results in it.
sed '/^==== rigserve GPU check/,$d' <<<"$bench_out"
echo
if grep -q '^==== rigserve GPU check' <<<"$bench_out"; then
  sed -n '/^==== rigserve GPU check/p' <<<"$bench_out"
else
  echo "==== rigserve GPU check: $gpu_line ===="
fi
for r in "${test_rows[@]}"; do echo "test $r"; done
sed -n '/^==== rigserve GPU check/,$p' <<<"$bench_out" | sed '1d'
[[ -n "$model_out" ]] && sed -n '/^==== model on GPU/,$p' <<<"$model_out"
echo "(gpu_check: $(( $(date +%s) - t_start )) s; tests $([[ $all_ok == 1 ]] && echo ok || echo FAILED), bench rc $bench_rc)"
if [[ "$gpu_line" == none ]]; then
  echo "no GPU on this machine: built/located the binaries, tests skipped, nothing measured"
  exit 0
fi
((all_ok == 1 && bench_rc == 0 && model_rc == 0)) || exit 1
exit 0
