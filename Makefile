# Two commands: `make demo` and `make test`. Both work on a fresh Debian machine.
# `make test` runs `make lint` (ruff, mypy) first: a new lint or type error fails it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install bench clean config-doc

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { sh scripts/install-test-deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pop2gate demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: $(STAMP) lint
	sh scripts/install-test-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fuzz tests as a long campaign: FUZZ_SCALE (default 100) times their examples (docs/testing.md).
.PHONY: fuzz
fuzz: $(STAMP)
	FUZZ=long $(BIN)/python -m pytest -q --timeout=0 --hypothesis-show-statistics tests/test_fuzz*.py tests/test_proxy.py $(PYTEST_ARGS)

# docs/configuration.md is generated from the configuration models (tests/test_config_doc.py checks it).
config-doc: $(STAMP)
	$(BIN)/pop2gate config reference > docs/configuration.md

bench: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
