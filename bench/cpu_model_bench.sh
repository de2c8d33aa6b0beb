#!/usr/bin/env bash
# CPU prefill and decode speed of the model (issue 3's benchmark): the `mini` presets (dense and
# MoE) and `bench-moe` (the llama.cpp comparison shape: H 1024, 16 layers, 48 experts top-8,
# ~840 MB at Q4_K_M), at several context lengths and thread counts, with the weight bytes read
# per decoded token and the achieved bandwidth. Decode should stay nearly flat with context:
# 3 of 4 layers keep O(1) state.
#
#   bench/cpu_model_bench.sh [RIGSERVE] [CONTEXTS] [THREADS]   e.g. build/rigserve "128 2048" "1 2"
set -euo pipefail
R=${1:-build/rigserve}
CONTEXTS=${2:-"128 2048 16384"}
THREADS=${3:-"1 2"}
DIR=${BENCH_DIR:-/tmp/rigserve-bench}
mkdir -p "$DIR"
models=("qwen35:mini" "qwen35moe:mini" "qwen35moe:bench-moe")
printf '%-22s %7s %3s %12s %12s %10s %8s\n' model context thr "prefill t/s" "decode t/s" "MB/token" "GB/s"
for m in "${models[@]}"; do
  arch=${m%%:*}; preset=${m#*:}
  f="$DIR/$arch-$preset-q4km.gguf"
  [ -f "$f" ] || "$R" make-model --arch "$arch" --preset "$preset" --quant Q4_K_M --out "$f" --quiet >/dev/null
  for ctx in $CONTEXTS; do
    ids=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(300)) for _ in range($ctx)))")
    for t in $THREADS; do
      log=$("$R" generate --model "$f" --prompt-ids "$ids" --max-tokens 33 --temperature 0 --threads "$t" 2>&1 >/dev/null)
      pre=$(sed -n 's/.*prefill [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
      dec=$(sed -n 's/.*decode [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
      mb=$(sed -n 's/.*decode reads \([0-9.]*\) MB.*/\1/p' <<<"$log")
      gbs=$(sed -n 's/.*per token: \([0-9.]*\) GB\/s.*/\1/p' <<<"$log")
      printf '%-22s %7s %3s %12s %12s %10s %8s\n' "$arch-$preset" "$ctx" "$t" "$pre" "$dec" "$mb" "$gbs"
    done
  done
done
