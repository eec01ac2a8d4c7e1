# Two commands matter: `make run` (set up if needed, then the whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# the tests also need the export runtimes (ONNX) and the test tools: a second step, so `make run` skips them
TEST_STAMP := $(VENV)/.installed-test
# Stage commands call `python`: make it the project's interpreter.
export PATH := $(BIN):$(PATH)

.PHONY: run test ui install lock bench clean-runs

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[pipeline]'
	@touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[pipeline,export,test]'
	@touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/dvc repro

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

ui: $(STAMP)
	$(BIN)/leaflab ui

bench: $(STAMP)
	$(BIN)/python benchmarks/frontends.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/preprocess.py

# Re-pin every dependency to what is installed now (after a deliberate upgrade).
lock: $(TEST_STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^leaflab' > requirements.lock
