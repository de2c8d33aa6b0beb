#!/usr/bin/env bash
# Configures and builds rigserve into ${BUILD_DIR:-build} (Release, Ninja, ccache when present).
# CUDA architectures: ${RIGSERVE_CUDA_ARCHS} if set, else CMake's default list (86;89;90;120).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release)
if command -v ccache >/dev/null; then
  args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
[ -n "${RIGSERVE_CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=${RIGSERVE_CUDA_ARCHS}")
[ -x /usr/local/cuda/bin/nvcc ] && export PATH=/usr/local/cuda/bin:$PATH
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" "${args[@]}" "$@"
fi
cmake --build "$BUILD_DIR" -j "${JOBS:-$(nproc)}"
