#!/usr/bin/env bash
# Issue 3's bar, measured side by side: rigserve's CPU path against llama.cpp's CPU build on the
# same GGUF file (`bench-moe` Q4_K_M: H 1024, 16 layers, 48 experts top-8, 837 MB), the same
# thread count and the same prompt, the two runs alternated so that a shared machine's drift hits
# both alike. The comparison runs llama.cpp through the prebuilt CPU binaries of the npm package
# node-llama-cpp (pinned below; installed into $BENCH_DIR, never into the repository), which
# picks the best of its CPU variants at run time (the log line `load_backend` names it).
#
#   bench/llama_side_by_side.sh [RIGSERVE] [RUNS] [PROMPT_TOKENS] [DECODE_TOKENS] [THREADS]
#
# Each run: one process that loads the model, prefills a PROMPT_TOKENS-token prompt in one batch
# (the prefill column: time to the first generated token) and then decodes DECODE_TOKENS tokens
# greedily. The prompt ids are the same pseudo-random ids < 300 for both. Last: the medians and
# rigserve / llama.cpp.
set -euo pipefail
R=${1:-build/rigserve}
RUNS=${2:-5}
P=${3:-128}
G=${4:-64}
T=${5:-2}
DIR=${BENCH_DIR:-/tmp/rigserve-bench}
NLC_VERSION=3.22.1
mkdir -p "$DIR"
F="$DIR/qwen35moe-bench-moe-q4km.gguf"
[ -f "$F" ] || "$R" make-model --arch qwen35moe --preset bench-moe --quant Q4_K_M --out "$F" --quiet >/dev/null

L="$DIR/llama-node"
if [ ! -d "$L/node_modules/node-llama-cpp" ]; then
  command -v npm >/dev/null || { echo "llama_side_by_side: npm is needed (apt-get install npm)"; exit 1; }
  mkdir -p "$L"
  (cd "$L" && npm init -y >/dev/null && npm install --ignore-scripts --no-audit --no-fund \
     "node-llama-cpp@$NLC_VERSION" >/dev/null)
fi
cat > "$L/bench.mjs" <<'EOF'
// Times llama.cpp (through node-llama-cpp) on one prompt: prefill, then greedy decode.
import {getLlama} from "node-llama-cpp";
const [modelPath, nPrompt, nGen, threads] =
    [process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5]];
const ids = process.argv[6].split(" ").map(Number);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath, gpuLayers: 0});
const ctx = await model.createContext({contextSize: nPrompt + nGen + 64, threads, batchSize: 512});
const seq = ctx.getSequence();
const t0 = performance.now();
let t1 = 0, n = 0;
for await (const tok of seq.evaluate(ids, {temperature: 0})) {
  if (n === 0) t1 = performance.now();
  if (++n > nGen) break;
}
const t2 = performance.now();
console.log(`${(nPrompt / ((t1 - t0) / 1000)).toFixed(1)} ${(nGen / ((t2 - t1) / 1000)).toFixed(1)}`);
process.exit(0);
EOF
IDS=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(300)) for _ in range($P)))")
printf '%-4s %-6s %18s %18s %18s %18s\n' run load "llama prefill t/s" "llama decode t/s" \
  "rigserve prefill" "rigserve decode"
: > "$DIR/sbs.txt"
for i in $(seq "$RUNS"); do
  load=$(cut -d' ' -f1 /proc/loadavg)
  read -r lp ld < <(cd "$L" && node bench.mjs "$F" "$P" "$G" "$T" "$IDS" | tail -1)
  log=$("$R" generate --model "$F" --prompt-ids "$IDS" --max-tokens $((G + 1)) --temperature 0 \
        --threads "$T" 2>&1 >/dev/null)
  rp=$(sed -n 's/.*prefill [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
  rd=$(sed -n 's/.*decode [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' <<<"$log")
  printf '%-4s %-6s %18s %18s %18s %18s\n' "$i" "$load" "$lp" "$ld" "$rp" "$rd"
  echo "$lp $ld $rp $rd" >> "$DIR/sbs.txt"
done
python3 - "$DIR/sbs.txt" <<'EOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"median: llama.cpp prefill {med[0]:.1f} decode {med[1]:.1f} tok/s; "
      f"rigserve prefill {med[2]:.1f} decode {med[3]:.1f} tok/s; "
      f"ratio prefill {med[2] / med[0]:.2f}x decode {med[3] / med[1]:.2f}x")
EOF
