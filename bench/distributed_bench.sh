#!/usr/bin/env bash
# Issue 6's benchmark: per-token decode time of the `mini` MoE model served by 1, 2 and 3 CPU
# worker processes on loopback (Gloo), measured with `rigserve bench` (1 stream, greedy), plus
# the bytes each worker moves per decoded token, computed from the model's shape and the
# protocol (ForwardDistributed): per MoE layer the owner broadcasts the normed state (4H B) and
# the routing (8k B) to every other rank and receives a [k][H] f32 slot buffer from each
# (reduce, 4kH B per rank), plus 4H B per pipeline hand-off.
#
#   bench/distributed_bench.sh [RIGSERVE] [PRESET]
set -euo pipefail
R=${1:-build/rigserve}
PRESET=${2:-mini}
DIR=${BENCH_DIR:-/tmp/rigserve-bench}
mkdir -p "$DIR"
F="$DIR/qwen35moe-$PRESET-q4km.gguf"
[ -f "$F" ] || "$R" make-model --arch qwen35moe --preset "$PRESET" --quant Q4_K_M --out "$F" --quiet >/dev/null
read -r H K L < <("$R" inspect --json "$F" | python3 -c '
import json,sys; m=json.load(sys.stdin)["metadata"]
g=lambda k: m["qwen35moe."+k]["value"]
print(g("embedding_length"), g("expert_used_count"), g("block_count"))')
printf '%-8s %12s %12s %12s %22s\n' workers "ITL p50 ms" "ITL p99 ms" "tok/s" "bytes/token/worker"
for N in 1 2 3; do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "$N" = 1 ]; then
    "$R" serve --model "$F" --listen "127.0.0.1:$PORT" --metrics-port -1 --threads 1 >"$DIR/serve$N.log" 2>&1 &
  else
    "$R" serve --model "$F" --listen "127.0.0.1:$PORT" --metrics-port -1 --threads 1 --local-workers "$N" >"$DIR/serve$N.log" 2>&1 &
  fi
  SP=$!
  for _ in $(seq 1 600); do grep -q "health SERVING" "$DIR/serve$N.log" && break; sleep 0.1; done
  "$R" bench --server "127.0.0.1:$PORT" --streams 1 --requests 3 --prompt-tokens 32 --max-tokens 32 \
    --json-out "$DIR/bench$N.json" >/dev/null 2>&1 || true
  kill $SP; wait $SP 2>/dev/null || true
  python3 - "$DIR/bench$N.json" "$N" "$H" "$K" "$L" <<'PY'
import json, sys
path, n, H, K, L = sys.argv[1], *map(int, sys.argv[2:])
try:
    lv = json.load(open(path))["levels"][0]
    p50, p99, tps = lv["itl_p50_s"] * 1e3, lv["itl_p99_s"] * 1e3, lv["gen_tokens_per_s"]
except Exception as e:  # keep the table going
    p50 = p99 = tps = float("nan")
if n == 1:
    moved = 0
else:
    # owner side, averaged: each rank owns L/n layers; per owned MoE layer it sends
    # (n-1)*(4H+8K) and receives (n-1)*4KH; as non-owner it receives 4H+8K and sends 4KH.
    own = L / n * (n - 1) * (4 * H + 8 * K + 4 * K * H)
    other = (L - L / n) * (4 * H + 8 * K + 4 * K * H)
    moved = int(own + other + 4 * H)  # + one hand-off per stage boundary (about)
print("%-8d %12.2f %12.2f %12.1f %22d" % (n, p50, p99, tps, moved))
PY
done
