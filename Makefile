# The README's two commands: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-unit lint bench

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/stabmon demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/.installed lint
	bash scripts/services.sh
	$(BIN)/pytest -q

# The unit tests alone: no server, subprocess, database server or browser (about a minute of CPU).
test-unit: $(BIN)/.installed
	$(BIN)/pytest -q -m "not integration"
