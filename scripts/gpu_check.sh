#!/usr/bin/env bash
# GPU check: on a CUDA machine with torch preinstalled and no network, build blipx in place,
# run the op tests (CUDA cases included), the benchmarks (printing their tables), compute-sanitizer
# memcheck on short CUDA op tests, then the demo. Target: under 6 minutes on an H100
# (never measured: no GPU has run this script yet).
#   scripts/gpu_check.sh            (PYTHON=..., TORCH_CUDA_ARCH_LIST=... to override)
# Logs and JSON rows go to $OUT (the device tool's output folder) when set, else ./gpu-check/.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-gpu-check}
mkdir -p "$LOG"
# Build only for the card that is here: halves the compile time of the default 8.0;9.0.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
fi
status=0
step() { echo; echo "=== $1 ($(date +%T))"; }

step "build (archs $TORCH_CUDA_ARCH_LIST)"
t0=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps --no-index -e . >"$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
$PY -m blipx info

step "CUDA tests (every test marked cuda) + the op tests on CPU"
# pytest-xdist (in the GPU image's package list) spreads the tests over 8 processes: the 11
# torch.compile cases alone take minutes in one process. One GPU serves all of them.
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 8"
$PY -m pytest -q -p no:cacheprovider $XDIST -m cuda tests 2>&1 | tail -25; [ "${PIPESTATUS[0]}" = 0 ] || status=1
$PY -m pytest -q -p no:cacheprovider $XDIST tests/ops -m "not cuda" -k "not compile" 2>&1 | tail -3; [ "${PIPESTATUS[0]}" = 0 ] || status=1

step "benchmarks (the tables also go to \$LOG/bench.txt; the issue's two first)"
for b in cross_attention captioning momentum_update sample_hard_negatives sample_tokens beam_search_step enqueue capfilt train; do
  timeout 150 $PY -m blipx bench $b --out "$LOG/bench.jsonl" 2>&1 | tee -a "$LOG/bench.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "bench $b failed or timed out"; status=1; }
done
step "compute-sanitizer memcheck on short CUDA op tests"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -x -p no:cacheprovider \
    tests/ops/test_momentum_update.py tests/ops/test_enqueue.py tests/ops/test_sample_hard_negatives.py \
    tests/ops/test_sample_tokens.py tests/ops/test_beam_search_step.py tests/ops/test_cross_attention.py \
    tests/ops/test_cross_attention_mma.py \
    -k "cuda and not compile and not graph" 2>&1 | tail -8
  rc=${PIPESTATUS[0]}; echo "compute-sanitizer exit code: $rc"; [ "$rc" = 0 ] || status=1
else
  echo "compute-sanitizer not found: skipped"
fi

step "demo on the GPU (1000 steps, fp32: the recipe measured on CPU)"
rm -rf "${TMPDIR:-/tmp}/blipx-demo"
timeout 240 $PY -m blipx demo --device cuda --out "${TMPDIR:-/tmp}/blipx-demo" --json "$LOG/demo_summary.json" 2>&1 | tr '\r' '\n' | grep -v "it/s" | tail -12
[ "${PIPESTATUS[0]}" = 0 ] || { echo "demo failed or timed out"; status=1; }

echo; echo "gpu_check: $([ $status = 0 ] && echo OK || echo FAILURES) in $(( $(date +%s) - t0 )) s"
exit $status
