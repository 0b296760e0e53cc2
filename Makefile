# trtforge — `make demo` runs the whole stack on a CPU; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch: on these machines pip takes it from local disk; elsewhere set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.trtforge-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/trtforge up tiny --demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/python -m pytest

# The benchmarks behind docs/benchmarks.md, with their default sizes (each prints a markdown table).
bench: $(STAMP)
	$(BIN)/python benchmarks/build_reap.py
	$(BIN)/python benchmarks/proxy.py
	$(BIN)/python benchmarks/cancel_latency.py
	$(BIN)/python benchmarks/llmapi_model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
