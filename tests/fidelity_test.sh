#!/usr/bin/env bash
# Fidelity against llama.cpp on the golden cases (../shared/golden), with the fast CPU backend
# as default and the reference backend checked against the exact float64 evaluation.
set -euo pipefail
rig=$1; shared=${2:-}
if [ -z "$shared" ] || [ ! -x "$shared/tools/check-fidelity" ] || [ ! -d "$shared/golden" ]; then
  echo "SKIP: no golden cases at '$shared' (the shared folder beside the checkout)"; exit 77
fi
python3 "$shared/tools/check-fidelity" --rigserve "$rig" --reference-backend reference
