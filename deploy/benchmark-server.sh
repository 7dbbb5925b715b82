#!/usr/bin/env bash
# Reruns the README's server table: closed-loop load (`adasoftmax loadgen`, 32 callers, 15 s
# each after 5 s unmeasured) on the calibrated W1 and W2 heads, held-out queries, audit off, in
# five settings: exact mode (batched: blocked SGEMM), adaptive batched and unbatched
# (--max_batch_size 1), each with the default exact fallback and without it (sample_cost 0).
# Then each head's memory: a server holding that head alone, its resident memory once ready,
# then its peak (VmHWM) while it samples every query (no fallback) for 32 callers, 10 s; and the
# same for a server holding a 64-row head of the same width, under the same load: the server's
# own memory, so that the difference is what the head adds.
#
#   deploy/benchmark-server.sh [WORKDIR] [SERVER_BIN_DIR]
#
# WORKDIR holds the data and calibrations of deploy/benchmark.sh (run that first; same default).
# SERVER_BIN_DIR (default: build/bin) lets another build's server run against the same data;
# the client is always this build's. About 5 minutes on two cores.
set -euo pipefail
# The CPU's own BLAS kernels for the baseline, as in deploy/benchmark.sh.
unset OPENBLAS_CORETYPE

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="$root/build/bin/adasoftmax"
work="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/adasoftmax/benchmark}"
server_bin="${2:-$root/build/bin}"
out="$work/results/server"
repo="$work/server-models"
address=127.0.0.1:50151
mkdir -p "$out" "$repo"

# repository, model name, data folder, held-out offset, extra config
model() {
  local repo=$1
  shift
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
model "$repo" w1 heavy768 700 ""
model "$repo" w1-sampler heavy768 700 "adaptive { sample_cost: 0 }"
model "$repo" w2 heavy4096 300 ""
model "$repo" w2-sampler heavy4096 300 "adaptive { sample_cost: 0 }"
model "$repo-w1" w1-sampler heavy768 700 "adaptive { sample_cost: 0 }"
model "$repo-w2" w2-sampler heavy4096 300 "adaptive { sample_cost: 0 }"
for width in 768 4096; do
  "$tool" synth --n 64 --d "$width" --queries 1 --heavy-tailed --out-dir "$work/tiny$width" \
    >/dev/null
  mkdir -p "$repo-tiny$width/tiny"
  printf 'name: "tiny"\nweights: "%s"\nadaptive { sample_cost: 0 }\n' \
    "$work/tiny$width/weights.npy" >"$repo-tiny$width/tiny/model.pbtxt"
done

server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# repository, max batch size, log name: starts the server and waits until it serves
start_server() {
  "$server_bin/adasoftmax-server" --model_repository "$1" --address "$address" \
    --metrics_address 127.0.0.1:0 --audit_fraction 0 --max_batch_size "$2" 2>"$out/$3.log" &
  server_pid=$!
  until "$tool" health --target "$address" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/$3.log" >&2; exit 1; }
    sleep 1
  done
}

# batch size, then (model, mode, data folder) triples
serve_and_load() {
  local batch=$1
  shift
  start_server "$repo" "$batch" "server-b$batch"
  while [ $# -gt 0 ]; do
    echo "server benchmark: $1 $2, max batch $batch" >&2
    # 5 s first, unmeasured: the sample-cost meter settles on this load.
    for seconds in 5 15; do
      "$tool" loadgen --target "$address" --model "$1" --mode "$2" \
        --queries "$work/$3/heldout.npy" --concurrency 32 --duration-s "$seconds" \
        >"$out/$1-$2-b$batch.json"
    done
    shift 3
  done
  stop_server
}

# repository, model, queries, output name: a server holding that repository alone, its RSS
# once ready and its peak under 32 callers sampling every query, 10 s: "<ready> <peak>" (kB) in
# $out/<output name>.rss
server_memory() {
  start_server "$1" 32 "server-$4"
  local ready_kb
  ready_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
  "$tool" loadgen --target "$address" --model "$2" --queries "$3" --concurrency 32 \
    --duration-s 10 >"$out/$4.json"
  echo "$ready_kb $(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status")" >"$out/$4.rss"
  stop_server
}

# head (w1 or w2), data folder, width: the memory of a server holding that head alone, and of
# one holding the tiny head of that width
peak_memory() {
  echo "server benchmark: peak memory, $1" >&2
  local queries="$work/$2/heldout.npy"
  server_memory "$repo-$1" "$1-sampler" "$queries" "memory-$1"
  server_memory "$repo-tiny$3" tiny "$queries" "memory-$1-server"
  /usr/bin/python3 -c "
import json, numpy as np, sys
kb = [int(v) * 1024 for v in sys.argv[2:]]
print(json.dumps({'ready_rss_bytes': kb[0], 'peak_rss_bytes': kb[1],
                  'server_ready_rss_bytes': kb[2], 'server_peak_rss_bytes': kb[3],
                  'weight_bytes': np.load(sys.argv[1], mmap_mode='r').nbytes}))" \
    "$work/$2/weights.npy" $(cat "$out/memory-$1.rss" "$out/memory-$1-server.rss") \
    >"$out/memory-$1.bytes.json"
}

serve_and_load 32 w1 exact heavy768 w1 adaptive heavy768 w1-sampler adaptive heavy768 \
  w2 exact heavy4096 w2 adaptive heavy4096 w2-sampler adaptive heavy4096
serve_and_load 1 w1 adaptive heavy768 w1-sampler adaptive heavy768 \
  w2 adaptive heavy4096 w2-sampler adaptive heavy4096
peak_memory w1 heavy768 768
peak_memory w2 heavy4096 4096

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
print()
print("| model | weights MB | RSS ready / peak MB | server alone: ready / peak MB "
      "| process: ready / peak over weights | the head's share: ready / peak over weights "
      "| QPS | mean batch |")
print("|---|---|---|---|---|---|---|---|")
for model in ("w1", "w2"):
    with open(os.path.join(out, "memory-%s.bytes.json" % model)) as f:
        m = json.load(f)
    with open(os.path.join(out, "memory-%s.json" % model)) as f:
        r = json.load(f)
    w = m["weight_bytes"]
    ready, peak = m["ready_rss_bytes"], m["peak_rss_bytes"]
    server_ready, server_peak = m["server_ready_rss_bytes"], m["server_peak_rss_bytes"]
    print("| %s | %.0f | %.0f / %.0f | %.0f / %.0f | %.2f / %.2f | %.2f / %.2f | %.1f | %.1f |" % (
        model.upper(), w / 1e6, ready / 1e6, peak / 1e6, server_ready / 1e6, server_peak / 1e6,
        ready / w, peak / w, (ready - server_ready) / w, (peak - server_peak) / w, r["qps"],
        r["mean_batch_size"]))
PY
