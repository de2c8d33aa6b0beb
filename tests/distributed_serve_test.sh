#!/usr/bin/env bash
# Several worker processes on loopback (serve --local-workers N, Gloo between them): greedy
# output equals the single-process output with requests in flight concurrently; killing a
# worker fails the running request with UNAVAILABLE within 2 s, health goes NOT_SERVING, and a
# restarted worker rejoins and the daemon serves the same output again.
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
check_model() {  # arch, n workers, layers
  local arch=$1 n=$2 layers=$3
  local model="$T/$arch.gguf"
  "$R" make-model --arch "$arch" --preset tiny --quant Q8_0 --seed 5 --out "$model" >/dev/null 2>&1 || fail "make-model"
  local port; port=$(free_port)
  "$R" serve --model "$model" --listen "127.0.0.1:$port" --metrics-port -1 --local-workers "$n" \
      --layers "$layers" --threads 1 >"$T/serve-$arch-$n.log" 2>&1 &
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
  echo "ok: $arch tiny on $n workers (layers $layers): ${#PROMPTS[@]} concurrent requests match the single process"
  echo "$port $sp"
}

check_model qwen35 2 "0-2,3-7" >"$T/r2" || exit 1
grep "^ok" "$T/r2"; read -r _ SP2 <<<"$(tail -1 "$T/r2")"
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
for _ in $(seq 1 50); do grep -q "NOT_SERVING" "$T/serve-qwen35moe-3.log" && break; sleep 0.1; done
grep -q "NOT_SERVING" "$T/serve-qwen35moe-3.log" || fail "health did not go NOT_SERVING"
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
