# `make test` and `make demo` each build .venv from nothing; torch is pinned first so pip
# takes the CPU wheel instead of resolving a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0

.PHONY: test demo venv lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

venv: $(VENV)/.installed

# One intra-op thread per test process: on a 2-core machine that is also busy with other work,
# torch's and OpenBLAS's spinning thread pools otherwise slow some tests more than tenfold.
test: venv
	$(VENV)/bin/ruff check edgekd tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

demo: venv
	$(VENV)/bin/edgekd demo --out out/demo

lint: venv
	$(VENV)/bin/ruff check edgekd tests benchmarks

clean:
	rm -rf $(VENV) out runs
