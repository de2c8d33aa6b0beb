#!/usr/bin/env bash
# Installs rigserve's build and test dependencies from Debian 12 (idempotent; quick when
# everything is present). CUDA/NCCL are used as installed on the machine (/usr/local/cuda).
set -euo pipefail
PKGS=(build-essential cmake ninja-build pkg-config ccache curl git python3 python3-jinja2
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
      prometheus-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev libgloo-dev
      libopenblas-dev libpcre2-dev libutf8proc-dev clang libclang-rt-14-dev)
# The tokenizer peer check runs on Node.js; use the machine's own if it has one.
command -v npm >/dev/null 2>&1 || PKGS+=(nodejs npm)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
