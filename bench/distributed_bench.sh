#!/usr/bin/env bash
# Issue 6's benchmark: per-token decode time of the `mini` MoE model served by 1, 2 and 3 CPU
# worker processes on loopback (Gloo), measured with `rigserve bench` (1 stream, greedy), and
# what each worker moved, measured: every worker runs with RIGSERVE_COMM_STATS=1, so that
# ForwardDistributed logs its counters after every step (model_distributed.cc: expert dispatch
# + combine bytes sent/received, hand-off bytes, seconds inside the communicator). The last
# "decode" line of each rank gives bytes per decoded token and communication time per token.
# For comparison the script computes what the previous scheme (broadcast of the normed states
# and routing to every rank, sum-reduce of a [N][k][H] slot buffer) moved per token:
# per MoE layer and non-owner rank 4H + 8k bytes in and 4kH bytes out, so on average per
# worker (L / n owned layers, each with n-1 peers) 2 (n-1)/n L (4H + 8k + 4kH) per token, plus
# the hand-offs.
#
#   bench/distributed_bench.sh [RIGSERVE] [PRESET] [TOKENS]
set -euo pipefail
R=${1:-build/rigserve}
PRESET=${2:-mini}
TOKENS=${3:-32}
DIR=${BENCH_DIR:-/tmp/rigserve-bench}
mkdir -p "$DIR"
F="$DIR/qwen35moe-$PRESET-q4km.gguf"
[ -f "$F" ] || "$R" make-model --arch qwen35moe --preset "$PRESET" --quant Q4_K_M --out "$F" --quiet >/dev/null
read -r H K L < <("$R" inspect --json "$F" | python3 -c '
import json,sys; m=json.load(sys.stdin)["metadata"]
g=lambda k: m["qwen35moe."+k]["value"]
print(g("embedding_length"), g("expert_used_count"), g("block_count"))')
echo "model $F: H $H, top-$K, $L layers; 1 stream, 3 requests x $TOKENS tokens, prompt 32 tokens"
printf '%-7s %9s %9s %8s | %-44s | %12s\n' workers "ITL p50" "ITL p99" "tok/s" \
  "per decoded token and worker: bytes, comm ms" "old bytes/tok"
for N in 1 2 3; do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ "$N" = 1 ]; then
    "$R" serve --model "$F" --listen "127.0.0.1:$PORT" --metrics-port -1 --threads 1 >"$DIR/serve$N.log" 2>&1 &
  else
    RIGSERVE_COMM_STATS=1 "$R" serve --model "$F" --listen "127.0.0.1:$PORT" --metrics-port -1 --threads 1 \
      --local-workers "$N" >"$DIR/serve$N.log" 2>&1 &
  fi
  SP=$!
  for _ in $(seq 1 600); do grep -q "health SERVING" "$DIR/serve$N.log" && break; sleep 0.1; done
  "$R" bench --server "127.0.0.1:$PORT" --streams 1 --requests 3 --prompt-tokens 32 --max-tokens "$TOKENS" \
    --json-out "$DIR/bench$N.json" >/dev/null 2>&1 || true
  kill $SP; wait $SP 2>/dev/null || true
  python3 - "$DIR/bench$N.json" "$DIR/serve$N.log" "$N" "$H" "$K" "$L" <<'PY'
import json, re, sys
path, log, n, H, K, L = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
try:
    lv = json.load(open(path))["levels"][0]
    p50, p99, tps = lv["itl_p50_s"] * 1e3, lv["itl_p99_s"] * 1e3, lv["gen_tokens_per_s"]
except Exception:  # keep the table going
    p50 = p99 = tps = float("nan")
# Last "decode" counters of each rank.
last = {}
pat = re.compile(r"comm-stats rank (\d+)/\d+ decode: (.*)")
for line in open(log, errors="replace"):
    m = pat.search(line)
    if m:
        kv = m.group(2).split()
        last[int(m.group(1))] = {kv[i]: float(kv[i + 1]) for i in range(0, len(kv) - 1, 2)}
cells = []
for r in sorted(last):
    s = last[r]
    tok = max(s["tokens"], 1)
    moved = s["moe_sent"] + s["moe_recv"] + s["handoff_sent"] + s["handoff_recv"]
    cells.append("r%d %6.0f B %5.2f ms" % (r, moved / tok, (s["moe_comm_s"] + s["handoff_s"]) * 1e3 / tok))
old = 0 if n == 1 else 2 * (n - 1) / n * L * (4 * H + 8 * K + 4 * K * H) + 2 * 4 * H * (n - 1) / n
print("%-7d %7.2fms %7.2fms %8.1f | %-44s | %12.0f" % (n, p50, p99, tps, "; ".join(cells) or "-", old))
for r in sorted(last):
    s = last[r]
    tok = max(s["tokens"], 1)
    print("        rank %d: %d decode tokens, dispatch+combine sent %.0f B/tok, received %.0f B/tok, "
          "hand-off %.0f B/tok, %.2f ms/tok in MoE collectives, %.2f ms/tok in hand-offs, "
          "%.2f ms/tok computing experts" % (
              r, s["tokens"], s["moe_sent"] / tok, s["moe_recv"] / tok,
              (s["handoff_sent"] + s["handoff_recv"]) / tok, s["moe_comm_s"] * 1e3 / tok,
              s["handoff_s"] * 1e3 / tok, s["expert_compute_s"] * 1e3 / tok))
PY
done
echo "comm ms: wall time inside the communicator, including waiting for the peer that computes"
