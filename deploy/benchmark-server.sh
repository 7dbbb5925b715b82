#!/usr/bin/env bash
# Reruns the README's server table: closed-loop load (`adasoftmax loadgen`, 32 callers, 15 s
# each) on the calibrated W1 and W2 heads, held-out queries, audit off, in five settings: exact
# mode (batched: blocked SGEMM), adaptive batched and unbatched (--max_batch_size 1), each with
# the default exact fallback and without it (sample_cost 0).
#
#   deploy/benchmark-server.sh [WORKDIR] [SERVER_BIN_DIR]
#
# WORKDIR holds the data and calibrations of deploy/benchmark.sh (run that first; same default).
# SERVER_BIN_DIR (default: build/bin) lets another build's server run against the same data;
# the client is always this build's. About 6 minutes on two cores.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="$root/build/bin/adasoftmax"
work="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/adasoftmax/benchmark}"
server_bin="${2:-$root/build/bin}"
out="$work/results/server"
repo="$work/server-models"
address=127.0.0.1:50151
mkdir -p "$out" "$repo"

# model name, data folder, held-out offset, extra config
model() {
  mkdir -p "$repo/$1"
  [ -f "$work/$2/heldout.npy" ] || /usr/bin/python3 -c "
import numpy as np, sys
np.save(sys.argv[2], np.load(sys.argv[1])[int(sys.argv[3]):])" \
    "$work/$2/queries.npy" "$work/$2/heldout.npy" "$3"
  cat >"$repo/$1/model.pbtxt" <<EOF
name: "$1"
weights: "$work/$2/weights.npy"
calibration: "$work/$2/calibration.json"
$4
EOF
}
model w1 heavy768 700 ""
model w1-sampler heavy768 700 "adaptive { sample_cost: 0 }"
model w2 heavy4096 300 ""
model w2-sampler heavy4096 300 "adaptive { sample_cost: 0 }"

server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# batch size, then (model, mode, data folder) triples
serve_and_load() {
  local batch=$1
  shift
  "$server_bin/adasoftmax-server" --model_repository "$repo" --address "$address" \
    --metrics_address 127.0.0.1:0 --audit_fraction 0 --max_batch_size "$batch" \
    2>"$out/server-b$batch.log" &
  server_pid=$!
  until "$tool" health --target "$address" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server-b$batch.log" >&2; exit 1; }
    sleep 1
  done
  while [ $# -gt 0 ]; do
    echo "server benchmark: $1 $2, max batch $batch" >&2
    "$tool" loadgen --target "$address" --model "$1" --mode "$2" \
      --queries "$work/$3/heldout.npy" --concurrency 32 --duration-s 15 \
      >"$out/$1-$2-b$batch.json"
    shift 3
  done
  stop_server
}
serve_and_load 32 w1 exact heavy768 w1 adaptive heavy768 w1-sampler adaptive heavy768 \
  w2 exact heavy4096 w2 adaptive heavy4096 w2-sampler adaptive heavy4096
serve_and_load 1 w1 adaptive heavy768 w1-sampler adaptive heavy768 \
  w2 adaptive heavy4096 w2-sampler adaptive heavy4096

/usr/bin/python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [("exact", "exact, batched (SGEMM)", "", 32), ("adaptive", "adaptive, batched", "", 32),
        ("adaptive", "adaptive, unbatched", "", 1),
        ("adaptive", "adaptive, batched, no fallback", "-sampler", 32),
        ("adaptive", "adaptive, unbatched, no fallback", "-sampler", 1)]
print("| model | server | QPS | p50 ms | p99 ms | mean fraction | exact answers | mean batch |")
print("|---|---|---|---|---|---|---|---|")
for model in ("w1", "w2"):
    for mode, label, suffix, batch in rows:
        with open(os.path.join(out, "%s%s-%s-b%d.json" % (model, suffix, mode, batch))) as f:
            r = json.load(f)
        print("| %s | %s | %.1f | %.0f | %.0f | %.3f | %d/%d | %.1f |" % (
            model.upper(), label, r["qps"], r["latency_ms"]["p50"], r["latency_ms"]["p99"],
            r["mean_sample_fraction"], r["exact_answers"], r["ok"], r["mean_batch_size"]))
PY
