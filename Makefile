# Two commands: `make demo` and `make test`. Both work on a fresh Debian machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { sh scripts/install-test-deps.sh venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pop2gate demo

test: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python bench/run.py
	$(BIN)/python bench/imap.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
