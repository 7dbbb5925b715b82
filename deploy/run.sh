#!/usr/bin/env bash
# One entry point for developers: installs what is missing, configures CMake (Release) into
# build/, builds, then runs the requested job.
#
#   deploy/run.sh serve [server flags]  start adasoftmax-server on the default model repository
#   deploy/run.sh test                  run the whole test suite (what CI runs)
#   deploy/run.sh demo                  offline demo: adaptive vs exact on the shipped OCR head
#   deploy/run.sh build                 just build
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
job="${1:-build}"
[ $# -gt 0 ] && shift

"$root/deploy/install-deps.sh"
cmake -S "$root" -B "$root/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$root/build" -j "$(nproc)"

case "$job" in
  build) ;;
  serve)
    cat <<MSG
adasoftmax-server starts on 127.0.0.1:50051 (metrics on 127.0.0.1:9464/metrics).
The first start generates the 50257 x 768 "lm" model into the cache (about half a minute).
Query it from another shell:
  build/bin/adasoftmax health --target 127.0.0.1:50051
  build/bin/adasoftmax models --target 127.0.0.1:50051
  build/bin/adasoftmax query --target 127.0.0.1:50051 --model ocr --queries tests/data/ppocrv4-rec/queries.npy --limit 8
MSG
    exec "$root/build/bin/adasoftmax-server" "$@"
    ;;
  demo) exec "$root/build/bin/adasoftmax" demo "$@" ;;
  test)
    cd "$root/build"
    exec ctest --output-on-failure --timeout 1800 "$@"
    ;;
  *)
    echo "deploy/run.sh: unknown job '$job' (serve, test, demo, build)" >&2
    exit 2
    ;;
esac
