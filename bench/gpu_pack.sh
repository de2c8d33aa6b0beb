#!/usr/bin/env bash
# Builds the CUDA tests and the GPU benchmark HERE (build dir build-gpu, sm_90 by default) and
# packs them, with the shared libraries that a bare GPU host lacks (Abseil, cudart, libstdc++,
# ...), into one folder for `bench/gpu_check.sh --prebuilt DIR` on the GPU machine. The build
# has no gRPC (RIGSERVE_WITH_GRPC=OFF) and one shared copy of the device code
# (RIGSERVE_CUDA_SHARED=ON, librs_cuda.so): what travels stays under the limit. Its own build
# dir (a first build takes ~15 minutes on 2 cores).
#
#   bench/gpu_pack.sh [DIR]          DIR defaults to .carry/gpu (ignored by git)
#   env: CUDA_ARCH=90  BUILD_DIR=build-gpu  JOBS=1
#
# Layout of DIR: bin/ (cuda_*_test, gpu_bench_main, gpu_model_main), lib/ (the .so files),
# golden/ (the golden models for cuda_model_test), MANIFEST (commit, architecture, sizes); and
# DIR.tar.xz, the same compressed (what travels). The GPU host runs them with
# LD_LIBRARY_PATH=DIR/lib:
#   mkdir -p /tmp/g && tar -xJf .carry/gpu.tar.xz -C /tmp/g && bench/gpu_check.sh --prebuilt /tmp/g/gpu
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.carry/gpu}
BUILD=${BUILD_DIR:-$ROOT/build-gpu}
ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-1}
LIMIT_MIB=60

NVCC=$(command -v nvcc || true)
[[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]] && NVCC=/usr/local/cuda/bin/nvcc
if [[ -z "$NVCC" ]]; then
  echo "gpu_pack: nvcc not found (PATH or /usr/local/cuda/bin); cannot build the CUDA binaries" >&2
  exit 1
fi

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# --as-needed: the test binaries link every project library; keep only the shared libraries
# they really use (no gRPC/protobuf for the CUDA tests), so that little has to travel.
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRIGSERVE_WITH_CUDA=ON \
  -DRIGSERVE_WITH_GRPC=OFF -DRIGSERVE_CUDA_SHARED=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="$ARCH" \
  -DCMAKE_EXE_LINKER_FLAGS="-Wl,--as-needed" "${launcher[@]}" >/dev/null

targets=(gpu_bench_main gpu_model_main)
for src in "$ROOT"/tests/cuda/*_test.cc; do
  # *_emu_test: the kernels in the host SIMT emulator; they run in the test suite, not here.
  [[ "$src" == *_emu_test.cc ]] && continue
  targets+=("$(basename "$src" .cc)")
done
echo "gpu_pack: building ${targets[*]} in $BUILD (sm_$ARCH, -j$JOBS)"
ninja -C "$BUILD" -j"$JOBS" "${targets[@]}"

rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/lib"
bins=("$BUILD/bench/gpu_bench_main" "$BUILD/bench/gpu_model_main")
for t in "${targets[@]:2}"; do bins+=("$BUILD/tests/$t"); done
cp "${bins[@]}" "$DEST/bin/"
strip --strip-unneeded "$DEST"/bin/* 2>/dev/null || true  # host symbols only; the GPU code stays

# Every library ldd resolves, except the C runtime that every Linux host has (glibc pieces and
# the loader). libstdc++ / libgcc_s travel: the GPU host's may be older than g++ 12's.
declare -A seen=()
for b in "${bins[@]}"; do
  while read -r lib; do
    name=$(basename "$lib")
    case "$name" in
      libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|ld-linux*|libresolv.so.*) continue ;;
      libcuda.so.*|libnvidia*) continue ;;  # the driver: always the host's own
    esac
    if [[ -z "${seen[$name]:-}" ]]; then
      seen[$name]=1
      cp -L "$lib" "$DEST/lib/$name"
      # Ours: host symbols only (the dynamic ones and the device code stay).
      [[ "$name" == librs_*.so ]] && strip --strip-unneeded "$DEST/lib/$name"
    fi
  done < <(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
done

# The golden models (a few MB) for cuda_model_test: the shared folder does not travel.
SHARED=${RS_SHARED_DIR:-$ROOT/../shared}
if [[ -d "$SHARED/golden" ]]; then
  for d in "$SHARED"/golden/*/; do
    [[ -f "$d/model.gguf" ]] || continue
    mkdir -p "$DEST/golden/$(basename "$d")"
    cp "$d/model.gguf" "$DEST/golden/$(basename "$d")/"
  done
fi

bytes=$(du -sb "$DEST" | cut -f1)
{
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "built: $(date -u +%FT%TZ) on $(uname -m), nvcc $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  echo "arch: sm_$ARCH"
  echo "size_bytes: $bytes"
  (cd "$DEST" && ls -l bin lib)
} >"$DEST/MANIFEST"
echo "gpu_pack: $DEST holds ${#bins[@]} binaries and ${#seen[@]} libraries, $((bytes / 1048576)) MiB"
# What travels is limited: pack it as DIR.tar.xz too (the GPU host unpacks it and runs
# gpu_check.sh --prebuilt on the unpacked folder).
tar -C "$(dirname "$DEST")" -cJf "$DEST.tar.xz" "$(basename "$DEST")"
xz_bytes=$(stat -c %s "$DEST.tar.xz")
echo "gpu_pack: $DEST.tar.xz: $((xz_bytes / 1048576)) MiB"
if ((xz_bytes > LIMIT_MIB * 1048576)); then
  echo "gpu_pack: WARNING: $((xz_bytes / 1048576)) MiB is over the ${LIMIT_MIB} MiB that may travel" >&2
  exit 1
fi
