# Two commands take a fresh machine to working (see README):
#   make demo   - set up, build, `blipx info`, pretrain + evaluate a small BLIP on synthetic shapes
#                 (`blipx demo`), then the benchmarks (quick) on this machine's device
#   make test   - set up, build (CUDA kernels too when nvcc and a CUDA torch exist), run the tests
# A virtual environment in .venv holds torch and blipx; nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch 2.14.1 is the CUDA 13.0 build (so the CUDA kernels compile and link even without a GPU);
# torchvision 0.29.1 pairs with it.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.deps-stamp

.PHONY: setup build test test-fast demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q "scikit-build-core>=0.10" cmake ninja pytest numpy safetensors "transformers>=5" tokenizers \
		pillow pyyaml tqdm matplotlib "webdataset>=1.0.2" "pycocoevalcap>=1.2" \
		"fastapi>=0.165" uvicorn python-multipart jinja2 httpx onnx onnxruntime onnxscript
	touch $(STAMP)

setup: $(STAMP)

# Editable install: Python edits need no rebuild; C++/CUDA edits rebuild incrementally in build/.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m blipx info
	$(PY) -m pytest -q

test-fast: build
	$(PY) -m pytest -q -x -m "not slow"

demo: build
	$(PY) -m blipx info
	$(PY) -m blipx demo
	$(PY) -m blipx bench --quick

bench: build
	$(PY) -m blipx bench --out bench-results.jsonl

clean:
	rm -rf build dist *.egg-info
