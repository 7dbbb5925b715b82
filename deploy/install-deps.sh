#!/usr/bin/env bash
# Installs the Debian 12 packages adasoftmax needs to build, test, benchmark and package itself.
# Idempotent: returns at once when everything is already installed.
set -euo pipefail

packages=(
  # Build toolchain and libraries.
  build-essential cmake pkg-config
  libopenblas-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev prometheus-cpp-dev
  libhwy-dev
  # Tests: an independent gRPC client, a real Prometheus, data helpers.
  python3 python3-numpy python3-grpcio python3-grpc-tools python3-yaml prometheus curl openssl
  # Image test: builds the Dockerfile without a Docker engine.
  buildah debootstrap
  # Benchmark plot.
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
