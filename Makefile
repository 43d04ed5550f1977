# The two commands of the README's quick start: `make demo` and `make test`.
# PY is the interpreter that creates .venv (3.11 or newer): `make demo PY=python3.12`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per install level: the demo needs the package alone, the tests also the test extra.
BASE_STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test
NEW_ENOUGH := import sys; sys.exit(sys.version_info < (3, 11))

# A .venv made by an older (or since removed) Python is rebuilt, not reused: otherwise a first try
# with 3.10 would poison every later make until `make clean`.
VENV_OK := $(shell [ -x $(BIN)/python ] && $(BIN)/python -c '$(NEW_ENOUGH)' 2>/dev/null && echo yes)
ifneq ($(wildcard $(VENV)),)
ifneq ($(VENV_OK),yes)
STALE_VENV := rebuild-venv
endif
endif

.PHONY: install demo test lint bench clean rebuild-venv

$(BASE_STAMP): pyproject.toml $(STALE_VENV)
	@$(PY) -c '$(NEW_ENOUGH)' 2>/dev/null || { \
	  echo "error: $(PY) is not Python 3.11 or newer ($$($(PY) --version 2>&1)); run e.g. make PY=python3.11" >&2; \
	  exit 2; }
	@if [ -d $(VENV) ] && [ "$(VENV_OK)" != yes ]; then \
	  echo "$(VENV) was made by an unusable Python ($$($(BIN)/python --version 2>&1 || echo missing)); rebuilding it with $(PY)"; \
	  rm -rf $(VENV); fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(TEST_STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(TEST_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/python -m bot demo --scenario all

# Lint, types (strict; the [tool.mypy] section of pyproject.toml), the import layers (the contracts
# of [tool.importlinter]), then the suite.
test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

bench: $(TEST_STAMP)
	for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python -m bench.$$(basename $$f .py) || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
