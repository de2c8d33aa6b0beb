#!/usr/bin/env bash
# CPU prefill and decode speed of the model (issue 3's benchmark): the `mini` presets (dense and
# MoE) and `bench-moe` (the llama.cpp comparison shape: H 1024, 16 layers, 48 experts top-8,
# ~840 MB at Q4_K_M), at several context lengths and thread counts, with the weight bytes read
# per decoded token and the achieved bandwidth (next to the machine's read bandwidth, measured
# last by matmul_bench when built). Decode should stay nearly flat with context:
# 3 of 4 layers keep O(1) state; the 4 attention layers read the KV cache (f16) once per token.
#
#   bench/cpu_model_bench.sh [--long] [RIGSERVE] [CONTEXTS] [THREADS]   e.g. build/rigserve "128 2048" "1 2"
#
# Each row: one `rigserve generate` run that prefills a CONTEXT-token prompt in one step (the
# prefill columns: its time and rate) and then decodes 33 tokens at that context.
# --long adds a 16384-token context at the largest thread count: its prefill is one step over
# 16K tokens (minutes on 2 cores: the `prefill s` column says how long), then decode at 16K.
# The load average is printed before every run: on a shared machine compare rows run at similar
# load, repeat and take the best.
set -euo pipefail
LONG=0
if [ "${1:-}" = "--long" ]; then LONG=1; shift; fi
R=${1:-build/rigserve}
CONTEXTS=${2:-"128 2048"}
THREADS=${3:-"1 2"}
DIR=${BENCH_DIR:-/tmp/rigserve-bench}
mkdir -p "$DIR"
models=("qwen35:mini" "qwen35moe:mini" "qwen35moe:bench-moe")
max_t=0
for t in $THREADS; do [ "$t" -gt "$max_t" ] && max_t=$t; done
printf '%-22s %7s %3s %10s %12s %12s %10s %8s  %s\n' model context thr "prefill s" "prefill t/s" \
  "decode t/s" "MB/token" "GB/s" "load (1 min)"
run() {  # model-file label ctx threads
  local f=$1 label=$2 ctx=$3 t=$4 ids log pre pres dec mb gbs load
  ids=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(300)) for _ in range($ctx)))")
  load=$(cut -d' ' -f1 /proc/loadavg)
  log=$("$R" generate --model "$f" --prompt-ids "$ids" --max-tokens 33 --temperature 0 --threads "$t" 2>&1 >/dev/null)
  pres=$(sed -n 's/.*prefill [0-9]* tokens in \([0-9.]*\) s.*/\1/p' <<<"$log")
  pre=$(sed -n 's/.*prefill [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
  dec=$(sed -n 's/.*decode [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
  mb=$(sed -n 's/.*decode reads \([0-9.]*\) MB.*/\1/p' <<<"$log")
  gbs=$(sed -n 's/.*per token: \([0-9.]*\) GB\/s.*/\1/p' <<<"$log")
  printf '%-22s %7s %3s %10s %12s %12s %10s %8s  %s\n' "$label" "$ctx" "$t" "$pres" "$pre" "$dec" \
    "$mb" "$gbs" "$load"
}
for m in "${models[@]}"; do
  arch=${m%%:*}; preset=${m#*:}
  f="$DIR/$arch-$preset-q4km.gguf"
  [ -f "$f" ] || "$R" make-model --arch "$arch" --preset "$preset" --quant Q4_K_M --out "$f" --quiet >/dev/null
  for ctx in $CONTEXTS; do
    for t in $THREADS; do run "$f" "$arch-$preset" "$ctx" "$t"; done
  done
  if [ "$LONG" = 1 ]; then run "$f" "$arch-$preset" 16384 "$max_t"; fi
done
# The machine's read bandwidth for the same thread counts (the roofline for the GB/s column),
# from matmul_bench's BM_MemRead when it was built next to this rigserve.
MB="$(dirname "$R")/bench/matmul_bench"
if [ -x "$MB" ]; then
  echo "machine read bandwidth (BM_MemRead, 1 GiB sweep):"
  "$MB" --benchmark_filter='BM_MemRead' 2>/dev/null |
    sed -n 's/^BM_MemRead\/threads:\([0-9]*\).*GBps=\([0-9.]*\).*/  \1 thread(s): \2 GB\/s/p'
fi
