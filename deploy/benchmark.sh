#!/usr/bin/env bash
# Reruns the README's tables and its plot:
#  - Results: what the sampler alone reads and how often it meets the PAC criterion
#    (--sample-cost 0: no exact fallback), theory and calibrated mode;
#  - Performance: exact vs adaptive latency on workloads W1-W5, without the exact fallback,
#    with it at the fixed default --sample-cost, and with the cost measured while running
#    (--measure-sample-cost, as the server does); the bare SGEMV baseline, bandwidth and peak
#    memory;
#  - Half precision: W1 and W2 (calibrated, held out) with the weights stored and kept in
#    bfloat16 and float16;
#  - the sampler's copy: W1-W3 (calibrated, held out) with it in float32 instead of float16;
#    and deploy/performance.png (latency vs matrix size);
#  - the server table, by deploy/benchmark-server.sh on the same data.
#
#   deploy/benchmark.sh [WORKDIR]     (default WORKDIR: ~/.cache/adasoftmax/benchmark)
#
# Needs a Release build (deploy/run.sh build) and about 6.5 GB of disk in WORKDIR. Data comes from
# `adasoftmax synth` with fixed seeds and every adaptive query uses a fixed seed, so sample counts
# and PAC results reproduce; latencies are medians of queries interleaved with the exact path.
# About 25 minutes on two cores once the data and calibrations exist (longer on the first run),
# most of it the 128256 x 4096 head and the server runs.
set -euo pipefail
# The baseline runs the kernels OpenBLAS (or core/blas_kernels.h) picks for this CPU, whatever
# the caller's environment forces: OPENBLAS_CORETYPE=Haswell on a Zen 5 host halved the batched
# exact path's queries/s.
unset OPENBLAS_CORETYPE

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="$root/build/bin/adasoftmax"
work="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/adasoftmax/benchmark}"
results="$work/results"
mkdir -p "$results"
ocr="$root/tests/data/ppocrv4-rec"
common=(--k 1 --epsilon 0.3 --delta 0.01 --seed 1)

synth() {  # name, then synth flags
  local name=$1
  shift
  [ -f "$work/$name/queries.npy" ] || "$tool" synth --out-dir "$work/$name" "$@" >/dev/null
}
synth dense768 --n 50257 --d 768 --queries 200 --seed 11
synth heavy768 --n 50257 --d 768 --queries 1000 --seed 12 --heavy-tailed
synth heavy4096 --n 32000 --d 4096 --queries 500 --seed 13 --heavy-tailed
synth heavy128k --n 128256 --d 4096 --queries 500 --seed 14 --heavy-tailed

# Make-style: a calibration holds for the sampler that made it, so it is redone when the tool
# was rebuilt after it. It chooses the multipliers and the partition function's lognormal
# correction (see core/calibration.h).
calibrate() {  # name, held-out fraction
  [ "$work/$1/calibration.json" -nt "$tool" ] || "$tool" calibrate --weights "$work/$1/weights.npy" \
    --queries "$work/$1/queries.npy" "${common[@]}" --holdout-fraction "$2" \
    --threads "$(nproc)" --out "$work/$1/calibration.json" >/dev/null
}
# Half-precision copies of a head's weights: float16 .npy and bfloat16 .safetensors (rounded to
# nearest even), so that models load in their stored dtype.
halves() {
  [ -f "$work/$1/weights.bf16.safetensors" ] || /usr/bin/python3 - "$work/$1" <<'PY'
import json, sys
import numpy as np
d = sys.argv[1]
a = np.load(d + "/weights.npy", mmap_mode="r")
np.save(d + "/weights.f16.npy", a.astype(np.float16))
bits = np.ascontiguousarray(a).view(np.uint32)
bf16 = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
header = json.dumps({"weight": {"dtype": "BF16", "shape": list(a.shape),
                                "data_offsets": [0, bf16.nbytes]}}).encode()
header += b" " * (-len(header) % 8)
with open(d + "/weights.bf16.safetensors", "wb") as f:
    f.write(len(header).to_bytes(8, "little") + header)
    bf16.tofile(f)
PY
}
halves heavy768
halves heavy4096

calibrate heavy768 0.3   # 700 calibration queries, 300 held out
calibrate heavy4096 0.4  # 300 calibration queries, 200 held out
calibrate heavy128k 0.4

# bench NAME, then bench flags: the sampler alone, then with the exact fallback at the fixed
# default cost, then at the measured one.
bench() {
  local name=$1
  shift
  echo "benchmark: $name" >&2
  "$tool" bench "$@" --sample-cost 0 >"$results/$name.sampler.json"
  "$tool" bench "$@" >"$results/$name.fallback.json"
  "$tool" bench "$@" --measure-sample-cost >"$results/$name.measured.json"
}
w() { echo --weights "$work/$1/weights.npy" --queries "$work/$1/queries.npy"; }
# shellcheck disable=SC2046  # w() prints flags to split
{
  bench w5-ocr --weights "$ocr/weights.npy" --bias "$ocr/bias.npy" --queries "$ocr/queries.npy" \
    "${common[@]}"
  bench w4-dense768 $(w dense768) "${common[@]}"
  bench w1-heavy768 $(w heavy768) --limit 200 "${common[@]}"
  bench w1-heavy768-calibrated $(w heavy768) --queries-offset 700 \
    --calibration "$work/heavy768/calibration.json" --seed 1
  bench w2-heavy4096 $(w heavy4096) --limit 200 "${common[@]}"
  bench w2-heavy4096-calibrated $(w heavy4096) --queries-offset 300 \
    --calibration "$work/heavy4096/calibration.json" --seed 1
  bench w3-heavy128k $(w heavy128k) --limit 200 "${common[@]}"
  bench w3-heavy128k-calibrated $(w heavy128k) --queries-offset 300 \
    --calibration "$work/heavy128k/calibration.json" --seed 1
  # Half precision, the float32 calibrations: PAC is judged on the rounded weights.
  for head in heavy768:700 heavy4096:300; do
    name=${head%:*} offset=${head#*:}
    for file in f16.npy bf16.safetensors; do
      bench "$name-${file%%.*}" --weights "$work/$name/weights.$file" \
        --queries "$work/$name/queries.npy" --queries-offset "$offset" --limit 200 \
        --calibration "$work/$name/calibration.json" --seed 1
    done
  done
  # The sampler's copy in float32 instead of the default float16, the sampler alone.
  for head in heavy768:700 heavy4096:300 heavy128k:300; do
    name=${head%:*} offset=${head#*:}
    echo "benchmark: $name, float32 copy" >&2
    "$tool" bench $(w "$name") --queries-offset "$offset" --seed 1 --sample-cost 0 \
      --calibration "$work/$name/calibration.json" --sampling-dtype float32 \
      >"$results/$name-copy32.sampler.json"
  done
}

/usr/bin/python3 - "$work" "$root/deploy/performance.png" <<'PY'
import json, os, subprocess, sys

work, png = sys.argv[1], sys.argv[2]
rows = [  # result name, label
    ("w5-ocr", "W5 OCR head + bias, real queries"),
    ("w4-dense768", "W4 dense Gaussian"),
    ("w1-heavy768", "W1 heavy-tailed"),
    ("w1-heavy768-calibrated", "W1 heavy-tailed, held out"),
    ("w2-heavy4096", "W2 heavy-tailed"),
    ("w2-heavy4096-calibrated", "W2 heavy-tailed, held out"),
    ("w3-heavy128k", "W3 heavy-tailed"),
    ("w3-heavy128k-calibrated", "W3 heavy-tailed, held out"),
]
def load(name, kind):
    with open(os.path.join(work, "results", "%s.%s.json" % (name, kind))) as f:
        return json.load(f)

print("Results (the sampler alone, --sample-cost 0):\n")
print("| workload | n x d | mode | queries | PAC success | mean fraction | median fraction |")
print("|---|---|---|---|---|---|---|")
for name, label in rows:
    r = load(name, "sampler")
    print("| %s | %d x %d | %s | %d | %.1f%% | %.3f | %.3f |" % (
        label, r["n"], r["d"], r["mode"], r["queries"], 100 * r["pac_success_rate"],
        r["mean_sample_fraction"], r["median_sample_fraction"]))

def pac(*runs):  # the worst of the runs with a fallback
    return 100 * min(r["pac_success_rate"] for r in runs)
def rss(r):  # the process's peak, and the model's share of it
    return "%.2f / %.2f" % (r["peak_rss_over_weight_bytes"], r["model_peak_rss_over_weight_bytes"])

print("\nPerformance (median / p99 ms; adaptive without the exact fallback, then with it at the "
      "fixed cost of a sample and at the measured one):\n")
print("| workload | mode | SGEMV | exact | exact / SGEMV | adaptive, sampler "
      "| adaptive, fixed cost | adaptive, measured cost | fallbacks fixed / measured | speedup fixed / measured | PAC "
      "| SGEMV GB/s | sampler GB/s: sampled / touched | peak RSS / weights: process / model |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, label in rows:
    s, f, m = load(name, "sampler"), load(name, "fallback"), load(name, "measured")
    print("| %s (%d x %d) | %s | %.2f | %.2f / %.2f | %.2f | %.2f / %.2f | %.2f / %.2f "
          "| %.2f / %.2f | %d / %d of %d | %.2fx / **%.2fx** | %.1f%% | %.1f | %.1f / %.1f "
          "| %s |" % (
        label, s["n"], s["d"], s["mode"], f["sgemv_median_ms"], f["exact_median_ms"],
        f["exact_p99_ms"], f["exact_over_sgemv"], s["adaptive_median_ms"], s["adaptive_p99_ms"],
        f["adaptive_median_ms"], f["adaptive_p99_ms"], m["adaptive_median_ms"],
        m["adaptive_p99_ms"], f["exact_fallbacks"], m["exact_fallbacks"], f["queries"],
        f["speedup"], m["speedup"], pac(f, m), f["sgemv_read_gb_per_s"],
        s["adaptive_read_gb_per_s"], s["adaptive_touched_gb_per_s"], rss(f)))

print("\nHalf precision (calibrated, held out; weights stored and kept in the dtype):\n")
print("| workload | dtype | bare GEMV | exact | adaptive, sampler | adaptive, fixed cost "
      "| adaptive, measured cost | fallbacks fixed / measured | speedup fixed / measured | PAC "
      "| GEMV GB/s | peak RSS / weights: process / model |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for name, label, f32 in (("heavy768", "W1", "w1-heavy768-calibrated"),
                         ("heavy4096", "W2", "w2-heavy4096-calibrated")):
    for result in (f32, name + "-f16", name + "-bf16"):  # the float32 row for comparison
        s, f, m = load(result, "sampler"), load(result, "fallback"), load(result, "measured")
        print("| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %d / %d of %d | %.2fx / **%.2fx** "
              "| %.1f%% | %.1f | %s |" % (
            label, f["dtype"], f["sgemv_median_ms"], f["exact_median_ms"],
            s["adaptive_median_ms"], f["adaptive_median_ms"], m["adaptive_median_ms"],
            f["exact_fallbacks"], m["exact_fallbacks"], f["queries"], f["speedup"], m["speedup"],
            pac(f, m), f["sgemv_read_gb_per_s"], rss(f)))

print("\nThe sampler's copy of float32 weights (calibrated, held out, the sampler alone):\n")
print("| workload | copy | exact | adaptive, sampler | speedup | median fraction | PAC "
      "| sampler GB/s: sampled / touched | peak RSS / weights: process / model |")
print("|---|---|---|---|---|---|---|---|---|")
for name, label in (("heavy768", "W1"), ("heavy4096", "W2"), ("heavy128k", "W3")):
    for result in ("w%s-%s-calibrated" % (label[1], name), name + "-copy32"):
        s = load(result, "sampler")
        print("| %s | %s | %.2f | %.2f / %.2f | %.2fx | %.3f | %.1f%% | %.1f / %.1f | %s |" % (
            label, s["sampling_dtype"], s["exact_median_ms"], s["adaptive_median_ms"],
            s["adaptive_p99_ms"], s["speedup"], s["median_sample_fraction"],
            100 * s["pac_success_rate"], s["adaptive_read_gb_per_s"],
            s["adaptive_touched_gb_per_s"], rss(s)))

for name in ("heavy768", "heavy4096", "heavy128k"):
    with open(os.path.join(work, name, "calibration.json")) as f:
        c = json.load(f)
    print("\nCalibration (%s): multipliers top-k %g, normaliser %g; %d calibration queries, %d "
          "failures, Clopper-Pearson %.0f%% bound %.4f; held-out failure rate %.4f on %d queries."
          % (name, c["topk_multiplier"], c["normalizer_multiplier"], c["calibration_queries"],
             c["calibration_failures"], 100 * c["confidence"], c["failure_bound"],
             c["holdout_failure_rate"], c["holdout_queries"]))

# The plot: latency against matrix size on the workloads with real or heavy-tailed queries,
# each sampler point labelled with its fraction of A read: theory mode (index 0 of the data
# file) and calibrated mode (index 1).
data = os.path.join(work, "results", "plot.dat")
with open(data, "w") as out:
    for names in (("w5-ocr", "w1-heavy768", "w2-heavy4096", "w3-heavy128k"),
                  ("w1-heavy768-calibrated", "w2-heavy4096-calibrated",
                   "w3-heavy128k-calibrated")):
        for name in names:
            s, f, m = load(name, "sampler"), load(name, "fallback"), load(name, "measured")
            out.write("%g %g %g %g %g %.2f\n" % (
                s["n"] * s["d"], f["exact_median_ms"], s["adaptive_median_ms"],
                m["adaptive_median_ms"], f["sgemv_median_ms"], s["mean_sample_fraction"]))
        out.write("\n\n")
script = """
set terminal pngcairo size 900,560 font ",11"
set output "%s"
set logscale xy
set xlabel "matrix entries n x d (float32)"
set ylabel "median latency per query (ms)"
set key top left
set grid
set title "Top-1 softmax, epsilon 0.3, delta 0.01, OCR and heavy-tailed queries (labels: fraction of A sampled)"
plot "%s" index 0 using 1:2 with linespoints lw 2 title "exact (OpenBLAS SGEMV + fused softmax)", \\
     "" index 0 using 1:5 with linespoints dt 2 title "bare SGEMV", \\
     "" index 0 using 1:3 with linespoints lw 2 title "adaptive theory, sampler alone", \\
     "" index 0 using 1:3:(sprintf("%%.2f", $6)) with labels offset 0,1 notitle, \\
     "" index 1 using 1:3 with linespoints lw 2 title "adaptive calibrated, sampler alone", \\
     "" index 1 using 1:3:(sprintf("%%.2f", $6)) with labels offset 0,-1 notitle, \\
     "" index 0 using 1:4 with linespoints lw 2 \\
       title "adaptive theory with exact fallback, measured cost"
""" % (png, data)
subprocess.run(["gnuplot"], input=script.encode(), check=True)
print("\nPlot: %s" % png)
PY

echo >&2
"$root/deploy/benchmark-server.sh" "$work"
