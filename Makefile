# The two set-up commands are `make demo` and `make test`: each creates .venv
# when it is missing, installs every dependency and the Rust extension, then runs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DEPS_STAMP := $(VENV)/.deps-stamp
export VIRTUAL_ENV := $(abspath $(VENV))
export PYO3_PYTHON := $(abspath $(PY))
# Triton kernels run in the interpreter on machines without a GPU.
TRITON_ENV := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo TRITON_INTERPRET=1)

.PHONY: help env lock native browser demo docs test test-avx2 test-fast test-rust test-py lint fmt bench bench-rust clean

help:
	@echo "make demo   - set up .venv if needed, run the end-to-end demo on the bundled model"
	@echo "make test   - set up .venv if needed, run cargo test and pytest"
	@echo "make docs   - execute the tutorial notebook, then build the site (mkdocs --strict) into site/"
	@echo "make lint   - ruff, mypy, cargo fmt --check, clippy -D warnings"
	@echo "make fmt    - format Python and Rust sources"
	@echo "make lock   - re-resolve requirements.lock from pyproject.toml (an upgrade: its own commit)"
	@echo "make bench  - run the benchmarks in benches/ (figures go into README tables)"

# Every Python dependency comes from the committed lock (requirements.lock), never
# from whatever the registry serves today; `make lock` re-resolves it on purpose.
UV_VERSION := 0.13.9
LOCK := requirements.lock

$(UV):
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

$(DEPS_STAMP): $(LOCK) | $(UV)
	$(UV) pip sync -q --python $(PY) $(LOCK)
	touch $(DEPS_STAMP)

# Universal resolution (Linux x86_64, CPython 3.11-3.12: see [tool.uv] in pyproject.toml),
# one version per package across those Pythons. An upgrade is its own commit, suite run on it.
lock: | $(UV)
	$(UV) pip compile -q pyproject.toml --extra dev --extra report --extra docs --universal \
		--fork-strategy fewest --generate-hashes -o $(LOCK)

env: $(DEPS_STAMP)

# Builds the Rust extension (and copies kernels/ into vlmfast/_kernels/) into .venv.
native: $(DEPS_STAMP)
	$(VENV)/bin/maturin develop --release --uv -q

demo: native
	$(VENV)/bin/vlmfast demo

# The documentation site (mkdocs.yml): the tutorial is executed first (docs/tutorials/*.py ->
# .ipynb with its outputs, ~1.5 min on 2 CPU cores, by the kernel of .venv), then `mkdocs build --strict` fails on a
# broken link, a reference to a missing name or a docstring griffe cannot read; the hook
# docs/hooks.py regenerates docs/reference/{config,cli}.md from the code before each build.
TUTORIALS := $(wildcard docs/tutorials/*.py)
docs: native
	for nb in $(TUTORIALS); do \
		(cd "$$(dirname "$$nb")" && OMP_NUM_THREADS=1 $(TRITON_ENV) JUPYTER_PATH=$(abspath $(VENV))/share/jupyter \
			$(abspath $(VENV))/bin/jupytext --to ipynb --execute "$$(basename "$$nb")"); \
	done
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The report's browser test drives Debian's chromium (never a browser download):
# installed here when missing, where apt-get can (root); otherwise that test skips, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the report's browser test"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
		else echo "chromium missing and apt-get unavailable: the browser test will skip"; fi; }

test-rust:
	cargo test -q --workspace

test-py: native browser
	$(TRITON_ENV) $(PY) -m pytest -q

test: native browser test-rust test-py

# Torch picks AVX-512 kernels where the CPU has them and AVX2 kernels elsewhere; the two
# sum in different orders. CI runs the numeric suites once more with AVX2 kernels, so a
# CPU without AVX-512 passes what CI passed. On a CPU without AVX-512 the main run already
# used AVX2 kernels, and this target says so instead of repeating it.
NUMERIC_SUITES := tests/models tests/ops tests/kernels tests/sae tests/causal
test-avx2: native
	@if grep -q avx512f /proc/cpuinfo 2>/dev/null; then \
		ATEN_CPU_CAPABILITY=avx2 $(TRITON_ENV) $(PY) -m pytest -q $(NUMERIC_SUITES); \
	else echo "test-avx2: this CPU has no AVX-512, so make test already ran AVX2 kernels"; fi

test-fast: native
	$(TRITON_ENV) $(PY) -m pytest -q -m "not slow"

lint: native
	$(VENV)/bin/ruff check python tests benches kernels
	$(VENV)/bin/ruff format --check python tests benches kernels
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest vlmfast._native
	cargo fmt --all --check
	cargo clippy -q --workspace --all-targets -- -D warnings
	cargo clippy -q --workspace --features python -- -D warnings

fmt: $(DEPS_STAMP)
	$(VENV)/bin/ruff check --fix -q python tests benches kernels || true
	$(VENV)/bin/ruff format -q python tests benches kernels
	cargo fmt --all

bench: native
	$(TRITON_ENV) $(PY) -m pytest benches -q --benchmark-enable --benchmark-columns=min,median,mean,rounds -p no:randomly

clean:
	rm -rf target python/vlmfast/_kernels .pytest_cache .mypy_cache .ruff_cache
