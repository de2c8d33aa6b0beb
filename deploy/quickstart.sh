#!/usr/bin/env bash
# The main job: install, build, generate the demo model (a tiny random Qwen3.5-MoE, since no
# weights can be downloaded here), start the daemon, hold a short streamed chat with it through
# the client, and say where the metrics are. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
R=build/rigserve
MODEL=${MODEL:-build/demo-tiny-moe.gguf}
PORT=${PORT:-50051}
METRICS_PORT=${METRICS_PORT:-9400}
if [ ! -f "$MODEL" ]; then
  $R make-model --arch qwen35moe --preset tiny --quant Q4_K_M --seed 1 --out "$MODEL"
fi
echo "== offline greedy generation on $MODEL"
$R generate --model "$MODEL" --prompt-ids "1 2 3 4 5 6 7 8" --max-tokens 16 --temperature 0

echo "== starting the daemon: $R serve --model $MODEL --listen 127.0.0.1:$PORT"
LOG=$(mktemp /tmp/rigserve-serve.XXXXXX.log)
$R serve --model "$MODEL" --listen "127.0.0.1:$PORT" --metrics-port "$METRICS_PORT" >"$LOG" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "health SERVING" "$LOG" && break
  kill -0 $PID 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
cat "$LOG"
echo "== chat (streamed; the demo model has random weights, so the words are noise)"
$R client chat --server "127.0.0.1:$PORT" --system "You are a helpful assistant." \
  --message "Say hello in three languages." --max-tokens 48 --temperature 0.7 --seed 42
echo "== chat with thinking off"
$R client chat --server "127.0.0.1:$PORT" --message "And now without thinking." --no-think \
  --max-tokens 24 --temperature 0
echo "== metrics: http://127.0.0.1:$METRICS_PORT/metrics"
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^vllm:(generation_tokens_total|prompt_tokens_total|num_requests_running)' || true
