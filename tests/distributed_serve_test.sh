#!/usr/bin/env bash
# Several worker processes on loopback (serve --local-workers N, Gloo between them): greedy
# output equals the single-process output with requests in flight concurrently, and a sampled
# request (penalties, top-k, top-p, seed) equals offline `generate` with the same seed; killing a
# worker fails the running request with UNAVAILABLE within 2 s, health goes NOT_SERVING, and a
# restarted worker rejoins and the daemon serves the same output again. The same with workers
# started by hand that register with `coordinator --expect-workers 3` (planned placement, --rank,
# a restarted worker takes over its slot), a plan that cannot fit, and --device cuda:0 without a GPU.
set -uo pipefail
R=$1
T=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$T"/*.log; do echo "== $f"; tail -20 "$f"; done >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_serving() {  # log file
  for _ in $(seq 1 300); do grep -q "health SERVING" "$1" && return 0; sleep 0.1; done
  fail "daemon did not start ($1)"
}

PROMPTS=("1 2 3 4 5 6 7 8" "40 41 42" "100 7 300 9 12 55 61 2 8 19 20 21 22 23 24 25 26 27 28 29")
check_model() {  # arch, n workers, layers, [extra serve flags]
  local arch=$1 n=$2 layers=$3 extra=${4:-}
  local model="$T/$arch.gguf"
  "$R" make-model --arch "$arch" --preset tiny --quant Q8_0 --seed 5 --out "$model" >/dev/null 2>&1 || fail "make-model"
  local port; port=$(free_port)
  "$R" serve --model "$model" --listen "127.0.0.1:$port" --metrics-port -1 --local-workers "$n" \
      --layers "$layers" --threads 1 $extra >"$T/serve-$arch-$n.log" 2>&1 &
  local sp=$!
  wait_serving "$T/serve-$arch-$n.log"
  local i=0 cps=()
  for p in "${PROMPTS[@]}"; do
    "$R" generate --model "$model" --prompt-ids "$p" --max-tokens 12 --temperature 0 --threads 1 --stop-at-eos >"$T/want$i" 2>/dev/null || fail "offline generate"
    "$R" client generate --server "127.0.0.1:$port" --prompt-ids "$p" --max-tokens 12 --temperature 0 >"$T/got$i" 2>"$T/client$i.log" &
    cps+=($!)
    i=$((i + 1))
  done
  wait "${cps[@]}"
  for j in $(seq 0 $((i - 1))); do
    cmp -s "$T/want$j" "$T/got$j" || fail "$arch on $n workers, prompt $j: got '$(cat "$T/got$j")' want '$(cat "$T/want$j")'"
  done
  # Sampled (penalties, top-k, top-p, a seed): the daemon's tokens equal offline generate's.
  local S=(--temperature 0.8 --top-k 20 --top-p 0.9 --presence-penalty 0.5 --frequency-penalty 0.3 --seed 11)
  "$R" generate --model "$model" --prompt-ids "${PROMPTS[0]}" --max-tokens 12 "${S[@]}" --threads 1 --stop-at-eos >"$T/want-s" 2>/dev/null || fail "offline sampled generate"
  "$R" client generate --server "127.0.0.1:$port" --prompt-ids "${PROMPTS[0]}" --max-tokens 12 "${S[@]}" >"$T/got-s" 2>"$T/client-s.log" || fail "sampled client"
  cmp -s "$T/want-s" "$T/got-s" || fail "$arch on $n workers, sampled: got '$(cat "$T/got-s")' want '$(cat "$T/want-s")'"
  echo "ok: $arch tiny on $n workers (layers $layers): ${#PROMPTS[@]} concurrent requests match the single process, and a sampled one"
  echo "$port $sp"
}

# Asked for NCCL on CPU workers: the coordinator says why not, the workers try, agree that they
# cannot, say so, and the rows go over Gloo.
check_model qwen35 2 "0-2,3-7" "--data-plane nccl --device cpu,cpu" >"$T/r2" || exit 1
grep "^ok" "$T/r2"; read -r _ SP2 <<<"$(tail -1 "$T/r2")"
grep -q "data-plane nccl, but worker .* is on the cpu" "$T/serve-qwen35-2.log" || fail "no data-plane note in the log"
grep -q "NCCL not used (2 of 2 ranks could not create it; here: this worker runs on the cpu" \
  "$T/serve-qwen35-2.log" || fail "the workers did not agree on the fallback"
grep -q "activations over host" "$T/serve-qwen35-2.log" || fail "workers did not log their data plane"
kill "$SP2" 2>/dev/null
check_model qwen35moe 3 "0-1,2-5,6-7" >"$T/r3" || exit 1
grep "^ok" "$T/r3"; read -r PORT SP <<<"$(tail -1 "$T/r3")"
PIDS+=("$SP")

# Kill a worker mid-request.
WPID=$(ps -o pid= --ppid "$SP" | head -1 | tr -d ' ')
WARGS=$(ps -o args= -p "$WPID")
[ -n "$WPID" ] || fail "no worker process found"
"$R" client generate --server "127.0.0.1:$PORT" --prompt-ids "1 2 3" --max-tokens 30000 --temperature 0 \
  >"$T/long.out" 2>"$T/long.err" &
CP=$!
sleep 0.5
kill -9 "$WPID"
T0=$(date +%s.%N)
wait "$CP"; RC=$?
T1=$(date +%s.%N)
[ "$RC" -ne 0 ] || fail "the request survived its worker's death"
grep -q UNAVAILABLE "$T/long.err" || fail "expected UNAVAILABLE, got: $(cat "$T/long.err")"
python3 -c "import sys; d=$T1-$T0; print('request failed %.3f s after the kill' % d); sys.exit(0 if d < 2.0 else 1)" || fail "too slow"
for _ in $(seq 1 50); do grep -q "NOT_SERVING (a worker is down)" "$T/serve-qwen35moe-3.log" && break; sleep 0.1; done
grep -q "NOT_SERVING (a worker is down)" "$T/serve-qwen35moe-3.log" || fail "health did not go NOT_SERVING"
"$R" client generate --server "127.0.0.1:$PORT" --prompt-ids "1 2" --max-tokens 2 >"$T/during.out" 2>&1; grep -q UNAVAILABLE "$T/during.out" \
  || fail "new requests should get UNAVAILABLE while a worker is down: $(cat "$T/during.out")"
echo "ok: dead worker -> UNAVAILABLE, health NOT_SERVING"

# Restart it (same command line): it reloads, rejoins, and the daemon serves again.
# shellcheck disable=SC2086
"$R" ${WARGS#* } >"$T/restarted-worker.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 300); do grep -q "serving again" "$T/serve-qwen35moe-3.log" && break; sleep 0.1; done
grep -q "serving again" "$T/serve-qwen35moe-3.log" || fail "the daemon did not recover"
"$R" client generate --server "127.0.0.1:$PORT" --prompt-ids "${PROMPTS[0]}" --max-tokens 12 --temperature 0 >"$T/again" 2>/dev/null
"$R" generate --model "$T/qwen35moe.gguf" --prompt-ids "${PROMPTS[0]}" --max-tokens 12 --temperature 0 --threads 1 --stop-at-eos >"$T/want-again" 2>/dev/null
cmp -s "$T/again" "$T/want-again" || fail "after the rejoin: got '$(cat "$T/again")' want '$(cat "$T/want-again")'"
echo "ok: restarted worker rejoined; output unchanged"

# Workers started by hand register with `coordinator --expect-workers 3` (the placement planner
# picks layer ranges and experts from the tensor table and the workers' memory). Two register in
# order, the third asks for --rank 0: pipeline order third, first, second. The first starts
# before the coordinator and retries until it answers.
MODEL="$T/qwen35moe.gguf"
CPORT=$(free_port)
WCMD=(worker --coordinator "127.0.0.1:$CPORT" --model "$MODEL" --threads 1)
WP=()
start_worker() {  # index, extra args...
  local i=$1; shift
  "$R" "${WCMD[@]}" "$@" >"$T/worker$i.log" 2>&1 &
  WP[$i]=$!
  PIDS+=("$!")
}
worker_addr() { sed -n 's/.* as \([0-9.:]*\)$/\1/p' "$T/worker$1.log" | tail -1; }
start_worker 0
for _ in $(seq 1 100); do grep -q "did not take the registration" "$T/worker0.log" && break; sleep 0.1; done
grep -q "did not take the registration" "$T/worker0.log" || fail "worker 0 did not try to register before the coordinator was up"
"$R" coordinator --listen "127.0.0.1:$CPORT" --expect-workers 3 --metrics-port -1 >"$T/coord.log" 2>&1 &
PIDS+=("$!")
for i in 0 1 2; do
  if [ "$i" = 2 ]; then start_worker 2 --rank 0; elif [ "$i" = 1 ]; then start_worker 1; fi
  for _ in $(seq 1 300); do grep -q "worker $((i + 1))/3 registered" "$T/coord.log" && break; sleep 0.1; done
  grep -q "worker $((i + 1))/3 registered" "$T/coord.log" || fail "worker $i did not register"
done
wait_serving "$T/coord.log"
ORDER="pipeline order 0: $(worker_addr 2), 1: $(worker_addr 0), 2: $(worker_addr 1)"
grep -q "$ORDER" "$T/coord.log" || fail "expected '$ORDER' in the coordinator's log"
grep -q "placement of 3 workers (layer ranges planned" "$T/coord.log" || fail "no plan table logged"
# Every worker owns at least one layer (the table's "layers" column: A-B).
[ "$(grep -cE '^127\.0\.0\.1:[0-9]+ +[0-9]+-[0-9]+ ' "$T/coord.log")" -ge 3 ] || fail "a worker has no layers in the plan"
i=0; cps=()
for p in "${PROMPTS[@]}"; do
  "$R" client generate --server "127.0.0.1:$CPORT" --prompt-ids "$p" --max-tokens 12 --temperature 0 >"$T/reg$i" 2>"$T/regclient$i.log" &
  cps+=($!); i=$((i + 1))
done
wait "${cps[@]}"
for j in $(seq 0 $((i - 1))); do
  cmp -s "$T/want$j" "$T/reg$j" || fail "registered workers, prompt $j: got '$(cat "$T/reg$j")' want '$(cat "$T/want$j")'"
done
echo "ok: 3 workers registered (one before the coordinator was up; --rank honoured: $ORDER); planned placement; ${#PROMPTS[@]} concurrent requests match the single process"

# Every worker exports its own /metrics (an ephemeral port by default, logged).
for w in 0 1 2; do
  MURL=$(sed -n 's/.*worker metrics on \(http:[^ ]*\)$/\1/p' "$T/worker$w.log" | tail -1)
  [ -n "$MURL" ] || fail "worker $w logged no metrics address"
  MBODY=$(curl -sf "$MURL") || fail "worker $w: GET $MURL failed"
  STEPS=$(sed -n 's/^rigserve_worker_steps_total \([0-9.e+]*\)$/\1/p' <<<"$MBODY")
  TOKS=$(sed -n 's/^rigserve_worker_tokens_total \([0-9.e+]*\)$/\1/p' <<<"$MBODY")
  awk -v s="${STEPS:-0}" -v t="${TOKS:-0}" 'BEGIN { exit !(s > 0 && t > 0) }' \
    || fail "worker $w metrics show no steps/tokens (steps '${STEPS}', tokens '${TOKS}')"
  grep -q '^rigserve_worker_step_seconds_count' <<<"$MBODY" || fail "worker $w: no step histogram"
done
echo "ok: each worker's /metrics counts its steps and tokens"

# Kill one mid-request, then restart it with the same command: it registers again (a new
# port), takes over its slot, the group re-forms, and the output is unchanged.
"$R" client generate --server "127.0.0.1:$CPORT" --prompt-ids "1 2 3" --max-tokens 30000 --temperature 0 \
  >"$T/reglong.out" 2>"$T/reglong.err" &
CP=$!
sleep 0.5
kill -9 "${WP[0]}"
T0=$(date +%s.%N)
wait "$CP"; RC=$?
T1=$(date +%s.%N)
[ "$RC" -ne 0 ] || fail "the request survived its worker's death (registered workers)"
grep -q UNAVAILABLE "$T/reglong.err" || fail "expected UNAVAILABLE, got: $(cat "$T/reglong.err")"
python3 -c "import sys; d=$T1-$T0; print('registered: request failed %.3f s after the kill' % d); sys.exit(0 if d < 2.0 else 1)" || fail "too slow"
for _ in $(seq 1 50); do grep -q "NOT_SERVING (a worker is down)" "$T/coord.log" && break; sleep 0.1; done
grep -q "NOT_SERVING (a worker is down)" "$T/coord.log" || fail "health did not go NOT_SERVING (registered workers)"
"$R" client generate --server "127.0.0.1:$CPORT" --prompt-ids "1 2" --max-tokens 2 >"$T/regduring.out" 2>&1; grep -q UNAVAILABLE "$T/regduring.out" \
  || fail "new requests should get UNAVAILABLE while a registered worker is down: $(cat "$T/regduring.out")"
OLD=$(worker_addr 0)
start_worker 0
for _ in $(seq 1 300); do grep -q "serving again" "$T/coord.log" && break; sleep 0.1; done
grep -q "serving again" "$T/coord.log" || fail "the coordinator did not recover after the worker registered again"
grep -q "takes over slot 1 from $OLD" "$T/coord.log" || fail "the restarted worker did not take over slot 1"
"$R" client generate --server "127.0.0.1:$CPORT" --prompt-ids "${PROMPTS[0]}" --max-tokens 12 --temperature 0 >"$T/regagain" 2>/dev/null
cmp -s "$T/regagain" "$T/want0" || fail "after re-registration: got '$(cat "$T/regagain")' want '$(cat "$T/want0")'"
echo "ok: registered worker killed -> UNAVAILABLE, NOT_SERVING; restarted, it took over slot 1 ($OLD -> $(worker_addr 0)); output unchanged"

# A model that cannot fit is refused with the planner's numbers; a GPU device on a build or
# machine without one is refused with the reason.
RPORT=$(free_port)
"$R" coordinator --listen "127.0.0.1:$RPORT" --expect-workers 2 --metrics-port -1 --context 100000000 >"$T/refuse.log" 2>&1 &
RCP=$!
PIDS+=("$RCP")
for i in 3 4; do
  "$R" worker --coordinator "127.0.0.1:$RPORT" --model "$MODEL" --threads 1 >"$T/worker$i.log" 2>&1 &
  PIDS+=("$!")
done
for _ in $(seq 1 300); do kill -0 "$RCP" 2>/dev/null || break; sleep 0.1; done
wait "$RCP"; RC=$?
[ "$RC" -eq 1 ] || fail "the coordinator should refuse a plan that cannot fit (exit $RC)"
grep -q "placement: plan refused: .*context 100000000 x 25 slots.* B .*short by" "$T/refuse.log" \
  || fail "no planner refusal with numbers: $(tail -3 "$T/refuse.log")"
echo "ok: a plan that cannot fit is refused: $(grep -o 'plan refused: [^;]*' "$T/refuse.log" | cut -c1-160)..."
if "$R" worker --coordinator 127.0.0.1:1 --device cuda:0 --model "$MODEL" >"$T/nogpu.log" 2>&1; then
  echo "note: this machine has a usable GPU; --device cuda:0 started"  # not reached on CPU hosts
else
  grep -qE "device cuda:0: (this rigserve was built without CUDA|no usable GPU|GPU 0 cannot be used)" "$T/nogpu.log" \
    || fail "--device cuda:0 without a GPU: unclear error: $(cat "$T/nogpu.log")"
  echo "ok: --device cuda:0 without a GPU: $(grep -o 'device cuda:0: .*' "$T/nogpu.log" | cut -c1-100)"
fi
