#!/usr/bin/env bash
# Before a GPU is lent: run blipx, on this CPU machine, against the package versions of the GPU
# machine's image (the device tool's KINDS.md: torch 2.11.0+cu130, torchvision 0.26.0,
# transformers 5.17.0; no webdataset, pycocoevalcap, fastapi, uvicorn or python-multipart), so
# scripts/gpu_check.sh does not spend the short GPU lease on a version mismatch.
#   scripts/gpu_image_check.sh [VENV]     (default /tmp/blipx-gpu-image; ~3 GB from PyPI once)
# The venv is made with Python 3.12 (the image's) where python3.12 is on the PATH; PYTHON=... overrides.
# Builds a copy of the checkout for sm_90 only (as gpu_check.sh does there), then runs the test
# suite (less the tests of the packages the image lacks; gpu_check.sh runs none of them), the quick
# benchmarks and a 30-step demo.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/blipx-gpu-image}
COPY=$VENV/checkout
BASE=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && python3.12 -c "" 2>/dev/null && BASE=python3.12  # (a pyenv shim may exist yet not run)
if [ ! -x "$VENV/bin/python" ]; then
  "$BASE" -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 transformers==5.17.0 tokenizers safetensors numpy \
    pillow pyyaml tqdm pytest pytest-xdist onnx onnxruntime onnxscript httpx jinja2 "scikit-build-core>=0.10" \
    cmake ninja matplotlib || exit 1
fi
rm -rf "$COPY" && mkdir -p "$COPY"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$COPY"
cd "$COPY"
TORCH_CUDA_ARCH_LIST=9.0 "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps --no-index -e . || exit 1
"$VENV/bin/python" -m blipx info | head -3
# Left out: the tests of what the image lacks (WebDataset shards, pycocoevalcap's BLEU/CIDEr);
# tests/serve skips itself without fastapi.
"$VENV/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests --ignore=tests/data/test_shards.py \
  --ignore=tests/evaluation/test_captioning.py --deselect tests/data/test_shapes.py::test_export_shards_round_trip \
  2>&1 | grep -E "^(FAILED|ERROR)|passed|failed"
[ "${PIPESTATUS[0]}" = 0 ] && echo "tests: ok" || echo "tests: FAILURES"
OMP_NUM_THREADS=1 "$VENV/bin/python" -m blipx bench --quick >"$VENV/bench.log" 2>&1 && echo "bench --quick: ok" \
  || { echo "bench --quick failed:"; tail -20 "$VENV/bench.log"; }
"$VENV/bin/python" -m blipx demo --device cpu --steps 30 --eval-samples 20 --out "$VENV/demo" >"$VENV/demo.log" 2>&1 \
  && echo "demo (30 steps): ok" || { echo "demo failed:"; tail -20 "$VENV/demo.log"; }
