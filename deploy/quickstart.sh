#!/usr/bin/env bash
# The main job: install, build, make the demo model, run a short greedy generation on it.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
deploy/build.sh
MODEL=${MODEL:-build/demo-tiny-moe.gguf}
if [ ! -f "$MODEL" ]; then
  build/rigserve make-model --arch qwen35moe --preset tiny --quant Q4_K_M --seed 1 --out "$MODEL"
fi
build/rigserve inspect "$MODEL" | head -40
echo "== greedy generation on $MODEL"
build/rigserve generate --model "$MODEL" --prompt-ids "1 2 3 4 5 6 7 8" --max-tokens 16 --temperature 0
