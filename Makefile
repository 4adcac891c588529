# Two commands a newcomer types: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all clean

$(VENV)/.installed: setup.py constraints.txt tools/torchvision_cpu_fallback.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# torchvision's PyPI wheel is CUDA-linked: install the import-time fallback (see the file)
	site=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	cp tools/torchvision_cpu_fallback.py $$site/_cmpf_torchvision_fallback.py && \
	echo "import _cmpf_torchvision_fallback; _cmpf_torchvision_fallback.install()" > $$site/cmpf_torchvision_fallback.pth
	$(BIN)/python -c "import torchvision, open_clip, segment_anything"
	touch $(VENV)/.installed

setup: $(VENV)/.installed

demo: setup
	$(BIN)/cmpf demo --out demo_out

test: setup
	$(BIN)/lint-imports --no-cache  # the import contracts of .importlinter
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -m "not gpu and not trt and not slow" tests

test-all: setup
	$(BIN)/lint-imports --no-cache
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) demo_out
