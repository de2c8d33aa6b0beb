#!/usr/bin/env bash
# Fidelity against llama.cpp on the golden cases (../shared/golden), with the fast CPU backend
# as default and the reference backend checked against the exact float64 evaluation.
# A watchdog: if the check has not finished in 240 s (it takes seconds), the stacks of the
# rigserve it waits on are printed (gdb, where installed) before it is stopped, so a hang in CI
# leaves evidence.
set -euo pipefail
rig=$1; shared=${2:-}
if [ -z "$shared" ] || [ ! -x "$shared/tools/check-fidelity" ] || [ ! -d "$shared/golden" ]; then
  echo "SKIP: no golden cases at '$shared' (the shared folder beside the checkout)"; exit 77
fi
python3 "$shared/tools/check-fidelity" --rigserve "$rig" --reference-backend reference &
check=$!
limit=${FIDELITY_WATCHDOG_S:-240}
for _ in $(seq 1 $((limit * 10))); do kill -0 "$check" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$check" 2>/dev/null; then
  echo "fidelity_test: no result after $limit s; the rigserve processes it waits on:"
  for p in $(pgrep -P "$check" || true); do
    ps -o pid,etime,time,stat,args -p "$p" || true
    if command -v gdb >/dev/null; then
      gdb -p "$p" -batch -ex "thread apply all bt 20" 2>/dev/null | grep -E '^#|^Thread' | head -100
    fi
  done
  pkill -P "$check" || true
  kill "$check" 2>/dev/null || true
  exit 1
fi
wait "$check"
