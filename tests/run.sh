#!/usr/bin/env bash
# The whole test suite: installs dependencies, builds (one CUDA architecture to keep CI lean),
# runs every test under ctest. Idempotent; re-running rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export RIGSERVE_CUDA_ARCHS=${RIGSERVE_CUDA_ARCHS:-86}
BUILD_DIR=${BUILD_DIR:-build} deploy/build.sh
cd "${BUILD_DIR:-build}"
ctest --output-on-failure -j "${CTEST_JOBS:-2}" "$@"
