# fvdeploy — set-up and checks. `make demo` and `make test` install everything they need.
#
# torch: this machine's pip finds the CPU build torch==2.13.0 in its local wheel store. Elsewhere,
# install a CPU (or CUDA) torch yourself first, or override TORCH_PIP (e.g. add your CPU wheel index
# with --index-url). Never let pip resolve plain `torch` from PyPI: that pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIP ?= torch==2.13.0
# Triton: the server binary from nvidia-pytriton's wheel, kept apart in $(VENV)/triton-server (its own
# dependencies would pin numpy < 2, and a --no-deps install into the venv leaves pip's resolver
# complaining), and numpy 1.x for its Python-backend stub in $(VENV)/triton-stub
# (fastervit_deploy/triton/local.py).
PYTRITON_PIP ?= nvidia-pytriton==0.7.0
# TensorRT for RTX (requirements-lock.txt pins tensorrt-rtx-cu12 and its -bindings/-libs wheels): it parses our graphs
# and builds engines ahead of time on any machine, GPU or not. cu12 rather than cu13: an engine runs with the
# libraries it was built against, and the CUDA 12 ones need any driver from R525 on, where cu13 needs R580 or later
# (many RTX machines in the field run older drivers). TensorRT itself (tensorrt 10/11) is not installed: its PyPI
# packages download the libraries from NVIDIA's own index at install time.
STUB_NUMPY_PIP ?= numpy==1.26.4
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PIP)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-lock.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --upgrade --target $(VENV)/triton-server $(PYTRITON_PIP)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade --target $(VENV)/triton-stub $(STUB_NUMPY_PIP)
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

DEMO := build/demo/faster_vit_0_any_res_576x960.onnx

demo: install
	$(BIN)/fvdeploy models
	$(BIN)/fvdeploy export-onnx --model faster_vit_0_any_res --resolution 576 960 --pretrained --output $(DEMO) --overwrite \
	  || { echo "demo: NVIDIA's weights could not be fetched (the line above says why): going on with seeded checkpoint-like weights"; \
	       $(BIN)/fvdeploy export-onnx --model faster_vit_0_any_res --resolution 576 960 --output $(DEMO) --overwrite; }
	$(BIN)/fvdeploy inspect $(DEMO)
	$(BIN)/fvdeploy verify $(DEMO) --batch 2
	@$(BIN)/python -c "import json; c = json.load(open('$(DEMO).json'))['model']['checkpoint']; \
	  print('demo weights:', c['as_given'] + ' (NVIDIA, sha256 ' + c['sha256'][:12] + '...)' if c else 'seeded checkpoint-like random weights')"

test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-all: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not gpu and not macos"

bench: install
	$(BIN)/python benchmarks/onnx_vs_plain.py
	$(BIN)/python benchmarks/cpu_int8.py
	$(BIN)/python benchmarks/simplifiers.py
	$(BIN)/python benchmarks/evaluate_memory.py

clean:
	rm -rf $(VENV) build
