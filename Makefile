# scout: `make run` serves the demo, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/scout/v1/*.proto)
STUBS  := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))

.PHONY: all venv protos run test lint bench bench-full clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench,mcp]'
	touch $@

# Regenerate the stubs from protos/ (they are committed; never edit them by hand).
protos: $(STAMP)
	$(BIN)/python -m server.protogen

# Stubs are generated only when missing; tests/test_contract.py fails when they are stale.
$(STUBS): | $(STAMP)
	$(BIN)/python -m server.protogen

run: $(STAMP) $(STUBS)
	$(BIN)/scout-server --demo --metrics 127.0.0.1:9464

test: $(STUBS) lint
	$(BIN)/pytest

# buf breaking: protos/ must stay wire- and source-compatible with the last released
# contract, a committed buf image in protos-released/ (its README says why not git history).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf breaking --against ../protos-released/image.json

bench: $(STAMP) $(STUBS)
	$(BIN)/python -m bench --quick

bench-full: $(STAMP) $(STUBS)
	$(BIN)/python -m bench --full

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
